"""The command line, run in-process through ``main(argv, out)``."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from conftest import WAIT, Gates, register_test_types
from taskmgr import InvalidArgument, TaskManager, TaskStatus
from taskmgr.cli import main

S = TaskStatus


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


@pytest.fixture
def filled(db_path: str, gates: Gates) -> dict[str, int]:
    m = TaskManager(db_path, poll_interval=0.05)
    register_test_types(m, gates)
    with m:
        ok = m.submit("echo", {"x": 1}, name="ok task")
        bad = m.submit("fail", name="bad task")
        m.wait(ok, WAIT)
        m.wait(bad, WAIT)
    idle = TaskManager(db_path)
    register_test_types(idle, gates)
    new = idle.submit("echo", 2, name="not yet run")
    idle.shutdown()
    return {"ok": ok, "bad": bad, "new": new}


def test_list_prints_a_table_for_people(db_path: str, filled: dict[str, int]) -> None:
    code, text = run("list", "--db", db_path)
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "STATUS", "PROGRESS", "RETRIES", "UPDATED", "NAME", "RESULT"]
    assert len(lines) == 4
    assert "SUCCESS" in lines[1] and "FAILED" in lines[2] and "ValueError: bad input" in lines[2]
    assert "NEW" in lines[3]


def test_list_json_is_the_contracts_shape_and_filters(db_path: str, filled: dict[str, int]) -> None:
    code, text = run("list", "--db", db_path, "--json", "--status", "FAILED")
    assert code == 0
    body = json.loads(text)
    assert [t["id"] for t in body["tasks"]] == [filled["bad"]]
    assert body["tasks"][0]["task_status"] == "failed"
    assert run("list", "--db", db_path, "--json", "--limit", "1")[1].count('"id"') == 1


def test_show_tells_the_story_of_a_task(db_path: str, filled: dict[str, int]) -> None:
    code, text = run("show", str(filled["ok"]), "--db", db_path)
    assert code == 0
    assert "status: SUCCESS" in text
    assert "QUEUED -> RUNNING" in text and "RUNNING -> SUCCESS" in text
    code, text = run("show", str(filled["ok"]), "--db", db_path, "--json")
    body = json.loads(text)
    assert body["task"]["id"] == filled["ok"]
    assert [h["to"] for h in body["history"]] == ["new", "queued", "running", "success"]


def test_cancel_and_delete_follow_the_contract(db_path: str, filled: dict[str, int], capsys) -> None:
    assert run("cancel", str(filled["new"]), "--db", db_path) == (0, f"task {filled['new']} is CANCELLED\n")
    code, _ = run("cancel", str(filled["ok"]), "--db", db_path)
    assert code == 1
    assert f"Can't cancel task '{filled['ok']}' which is completed or cancelling" in capsys.readouterr().err
    assert run("delete", str(filled["ok"]), "--db", db_path)[0] == 0
    code, _ = run("show", str(filled["ok"]), "--db", db_path)
    assert code == 1
    assert f"Can't find task with id '{filled['ok']}'" in capsys.readouterr().err


def test_deleting_an_unfinished_task_needs_force(db_path: str, gates: Gates, capsys) -> None:
    idle = TaskManager(db_path)
    register_test_types(idle, gates)
    tid = idle.submit("echo", 1)
    idle.shutdown()
    assert run("delete", str(tid), "--db", db_path)[0] == 1
    assert "Please try to cancel the task first" in capsys.readouterr().err
    assert run("delete", str(tid), "--db", db_path, "--force", "--json") == (
        0,
        json.dumps({"deleted": tid, "status": "new"}) + "\n",
    )


def test_a_missing_database_is_an_error_not_a_new_file(tmp_path, capsys) -> None:
    path = tmp_path / "missing.db"
    assert run("list", "--db", str(path))[0] == 1
    assert "no task database at" in capsys.readouterr().err
    assert not path.exists()


@pytest.mark.parametrize(
    "argv",
    [["show", "abc"], ["show", "0"], ["list", "--limit", "-5"], ["frobnicate"], [],
     ["show", " 5"], ["show", "+5"], ["show", "1_0"], ["show", "\u0665"], ["show", "9" * 5000],
     ["list", "--limit", "1 "]],
)
def test_bad_command_lines_exit_2_with_usage(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: taskmgr" in capsys.readouterr().err


@pytest.mark.slow
def test_the_demo_runs_its_tasks_to_their_expected_ends(tmp_path) -> None:
    db = tmp_path / "demo.db"
    proc = subprocess.run(
        [sys.executable, "-m", "taskmgr", "demo", "--db", str(db), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    tasks = json.loads(proc.stdout)["tasks"]
    assert [t["task_status"] for t in tasks] == ["success", "cancelled", "success", "failed", "success"]
    assert tasks[2]["task_retries"] == 1
    assert proc.stderr == ""


# ------------------------------------------------- the edge (issue 16): careless operators
def _cli(*argv: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "taskmgr", *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, **kwargs)


def _one_line_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskmgr: error: ") and text in lines[0], proc.stderr


def test_a_reader_that_goes_away_ends_the_listing_quietly(db_path: str, gates: Gates) -> None:
    idle = TaskManager(db_path)
    register_test_types(idle, gates)
    idle.submit_many("echo", [{"x": "y" * 2000}] * 1000)  # 2 MB of JSON: more than a pipe holds
    idle.shutdown()
    proc = subprocess.Popen([sys.executable, "-m", "taskmgr", "list", "--json", "--limit", "-1", "--db", db_path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(100)) == 100  # | head -c 100
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(WAIT) in (0, 1)  # 1 where the write fails; some kernels end a big write early instead
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("host", ["256.1.1.1", "no-such-host.invalid"])
def test_serve_on_an_address_that_does_not_resolve_is_a_one_line_error(db_path: str, host: str) -> None:
    _one_line_error(_cli("serve", "--db", db_path, "--port", "0", "--host", host), f"cannot listen on '{host}'")


def test_an_auth_file_that_is_not_utf8_is_a_one_line_error(db_path: str, tmp_path) -> None:
    path = tmp_path / "auth"
    path.write_bytes(b"admin:\xff\xfe\n")
    _one_line_error(_cli("serve", "--db", db_path, "--port", "0", "--auth-file", str(path)), "is not UTF-8 text")


def test_an_auth_file_keeps_its_password_whole_and_drops_a_bom(tmp_path) -> None:
    from taskmgr.cli import _read_auth

    path = tmp_path / "auth"
    path.write_bytes(b"\xef\xbb\xbfadmin:pass word  \r\nsecond line\n")
    assert _read_auth(str(path)) == ("admin", "pass word  ")


def test_a_stdout_that_is_not_utf8_gets_escapes_not_a_traceback(db_path: str, gates: Gates) -> None:
    idle = TaskManager(db_path)
    register_test_types(idle, gates)
    tid = idle.submit("echo", "\u00e9t\u00e9", name="caf\u00e9 \u65e5\u672c")
    idle.shutdown()
    for argv in (["list"], ["list", "--json"], ["show", str(tid)]):
        proc = _cli(*argv, "--db", db_path, env={"PYTHONIOENCODING": "ascii"})
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "caf" in proc.stdout


def test_control_characters_in_a_name_are_printed_escaped(db_path: str, gates: Gates) -> None:
    evil = "\x1b]0;pwned\x07\x1b[2J\rroot# \x9b31m"
    idle = TaskManager(db_path)
    register_test_types(idle, gates)
    with pytest.raises(InvalidArgument, match="control character"):  # refused at the API ...
        idle.submit("echo", evil, name=evil)
    tid = idle.submit("echo", evil, name="plain")
    idle.shutdown()
    import sqlite3

    with sqlite3.connect(db_path) as db:  # ... but a file written by something else may hold one
        db.execute("UPDATE taskmgr_task SET name = ? WHERE id = ?", (evil, tid))
    for argv in (["list"], ["list", "--json"], ["show", str(tid)], ["show", str(tid), "--json"]):
        code, text = run(*argv, "--db", db_path)
        assert code == 0
        assert not any(c in text for c in "\x1b\x07\r\x9b"), (argv, text)
        assert "\\x1b" in text or "\\u001b" in text
    assert json.loads(run("list", "--json", "--db", db_path)[1])["tasks"][0]["task_name"] == evil


@pytest.mark.slow
def test_ctrl_c_in_the_demo_interrupts_its_tasks_rather_than_waiting_for_them(tmp_path) -> None:
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "taskmgr", "demo", "--db", str(tmp_path / "demo.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "demo" in proc.stdout.readline()
    time.sleep(1.0)  # the counting tasks are under way
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 5, "the demo waited for its callables (10 s of counting)"
    assert proc.returncode == 130 and err.strip().splitlines() == ["taskmgr: interrupted"], err


def test_serve_s_log_lines_cannot_be_forged_by_what_a_client_sends() -> None:
    import logging

    from taskmgr.cli import LogEscape

    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError("bad name 'x\n2026-01-01 00:00:00,000 INFO taskmgr.rest: forged\x1b[2J'")
    except ValueError:
        record = logging.LogRecord("waitress", logging.ERROR, __file__, 1, "Exception while serving %s",
                                   ("/graphs/x\n2026-01-01 INFO forged/tasks",), sys.exc_info())
    assert LogEscape().filter(record)
    text = formatter.format(record)
    first, *rest = text.splitlines()
    assert "forged" in first and "\\x0a2026" in first
    assert rest and all(line.startswith("    ") for line in rest) and "\x1b" not in text
