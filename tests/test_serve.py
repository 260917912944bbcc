"""`taskmgr serve` as a real process on a free loopback port, driven by the ecosystem's Python client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("falcon")
pytest.importorskip("waitress")

from conftest import WAIT
from taskmgr import TaskManager, TaskStatus

S = TaskStatus
pytestmark = pytest.mark.slow


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    banner: str
    err: list[str]  # what the server wrote to stderr, read as it comes (a full pipe would block its log)
    drain: threading.Thread

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out = self.proc.stdout.read()
        self.proc.wait(timeout=WAIT)
        self.drain.join(WAIT)
        return self.proc.returncode, out, "".join(self.err)


def _serve(db: str, *args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> Server:
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskmgr", "serve", "--db", db, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    banner = proc.stdout.readline()
    if "serving on" not in banner:
        proc.kill()
        raise AssertionError(f"serve did not start: {banner!r} {proc.stderr.read()!r}")
    url = banner.split("serving on ", 1)[1].split()[0].rstrip("/")
    err: list[str] = []
    drain = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")), daemon=True)
    drain.start()
    return Server(proc, url, banner, err, drain)


def _http(method: str, url: str, body: object = None, auth: tuple[str, str] | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if auth:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def server(db_path: str) -> Iterator[Server]:
    s = _serve(db_path, "--examples", env={"TASKMGR_AUTH": "admin:pa55word"})
    yield s
    if s.proc.poll() is None:
        s.stop()


def _until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_hugegraph_python_client_lists_gets_cancels_and_deletes(server: Server) -> None:
    pyhugegraph = pytest.importorskip("pyhugegraph")
    from pyhugegraph.client import PyHugeClient
    from pyhugegraph.utils.exceptions import NotFoundError

    assert "auth on" in server.banner and server.url.startswith("http://127.0.0.1:")
    client = PyHugeClient(server.url, graph="hugegraph", user="admin", pwd="pa55word")  # reads /versions first
    assert client.cfg.gs_supported and client.cfg.graphspace == "DEFAULT" and client.cfg.version == [1, 7, 0]
    auth = ("admin", "pa55word")
    code, body = _http("POST", f"{server.url}/graphspaces/DEFAULT/graphs/hugegraph/jobs/count", {"to": 1000,
                                                                                                 "pause": 0.05}, auth)
    assert code == 201
    long_id = body["task_id"]
    code, body = _http("POST", f"{server.url}/graphs/hugegraph/jobs/count?name=short", {"to": 2, "pause": 0.01}, auth)
    short_id = body["task_id"]
    tasks = client.task()
    _until(lambda: tasks.get_task(short_id)["task_status"] == "success", "the short task to succeed")
    listed = tasks.list_tasks()
    assert [t["id"] for t in listed["tasks"]] == [long_id, short_id]
    assert [t["id"] for t in tasks.list_tasks(status="SUCCESS", limit=10)["tasks"]] == [short_id]
    got = tasks.get_task(short_id)
    assert got["task_name"] == "short" and got["task_result"] == "2" and got["task_progress"] == 2
    _until(lambda: tasks.get_task(long_id)["task_status"] == "running", "the long task to run")
    assert tasks.cancel_task(long_id) == {"cancelled": True}
    _until(lambda: tasks.get_task(long_id)["task_status"] == "cancelled", "the cancel to land")
    assert tasks.delete_task(short_id) == {}
    with pytest.raises(NotFoundError) as info:
        tasks.get_task(short_id)
    assert json.loads(info.value.args[0])["message"] == f"Can't find task with id '{short_id}'"  # the raw body
    assert pyhugegraph is not None


def test_without_credentials_the_server_answers_401_and_keeps_secrets_out_of_its_log(server: Server) -> None:
    code, body = _http("GET", f"{server.url}/graphs/hugegraph/tasks")
    assert code == 401 and body["exception"] == "Unauthorized"
    code, _ = _http("POST", f"{server.url}/graphs/hugegraph/jobs/count", {}, ("admin", "nope"))
    assert code == 401
    code, _ = _http("GET", f"{server.url}/versions")
    assert code == 200
    rc, out, err = server.stop()
    assert rc == 0
    assert "pa55word" not in out + err and "nope" not in err
    assert "GET /graphs/hugegraph/tasks 401" in err
    reader = TaskManager(server.banner.split("database '", 1)[1].split("'", 1)[0])
    assert reader.list() == []
    reader.shutdown()


def test_sigterm_asks_running_tasks_to_stop_and_the_next_start_runs_them_again(db_path: str) -> None:
    first = _serve(db_path, "--examples")
    code, body = _http("POST", f"{first.url}/graphs/hugegraph/jobs/count", {"to": 100000, "pause": 0.01})
    tid = body["task_id"]
    _until(lambda: _http("GET", f"{first.url}/graphs/hugegraph/tasks/{tid}")[1]["task_progress"] > 3,
           "progress to be saved")
    rc, out, _ = first.stop()
    assert rc == 0 and "running tasks are asked to stop" in out
    reader = TaskManager(db_path)
    task = reader.get(tid)
    reader.shutdown()
    assert task.status is S.RESTORING and task.progress > 3
    second = _serve(db_path, "--examples")
    try:
        _until(lambda: _http("GET", f"{second.url}/graphs/hugegraph/tasks/{tid}")[1]["task_status"] == "running",
               "the task to run again")
        again = _http("GET", f"{second.url}/graphs/hugegraph/tasks/{tid}")[1]
        assert again["task_retries"] == 1 and again["task_progress"] >= task.progress
    finally:
        second.stop()


def test_a_host_module_registers_its_task_types(db_path: str, tmp_path) -> None:
    (tmp_path / "hostjobs.py").write_text(textwrap.dedent('''
        def setup(manager):
            @manager.task("double", http=True)
            def double(ctx):
                return ctx.input["x"] * 2
    '''))
    s = _serve(db_path, "--tasks", "hostjobs", cwd=str(tmp_path))
    try:
        assert "task types: double" in s.banner
        code, body = _http("POST", f"{s.url}/graphs/g/jobs/double", {"x": 21})
        assert code == 201
        _until(lambda: _http("GET", f"{s.url}/graphs/g/tasks/{body['task_id']}")[1]["task_status"] == "success",
               "the host's task to succeed")
        assert _http("GET", f"{s.url}/graphs/g/tasks/{body['task_id']}")[1]["task_result"] == "42"
    finally:
        s.stop()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--tasks", "no_such_module_here"], {}, "cannot import the tasks module 'no_such_module_here'"),
        (["--auth-file", "/no/such/file"], {}, "cannot read the credentials file '/no/such/file'"),
        ([], {"TASKMGR_AUTH": "nocolon"}, "$TASKMGR_AUTH must hold 'user:password' on one line"),
    ],
)
def test_serve_refuses_bad_settings_with_a_clear_error(db_path: str, args, env, message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "taskmgr", "serve", "--db", db_path, "--port", "0", *args],
        capture_output=True, text=True, timeout=WAIT, env={**os.environ, **env},
    )
    assert proc.returncode == 1
    assert message in proc.stderr


# ------------------------------------------------------------- the edge: stopping
STUBBORN = '''
import time

def setup(manager):
    @manager.task("stubborn", http=True)
    def stubborn(ctx):
        for _ in range(600):  # ignores its interrupt: never looks at ctx
            time.sleep(0.05)
        return "done"
'''


def _stubborn_server(db_path: str, tmp_path, *args: str) -> tuple[Server, int]:
    (tmp_path / "stubbornjobs.py").write_text(STUBBORN)
    s = _serve(db_path, "--tasks", "stubbornjobs", *args, cwd=str(tmp_path))
    code, body = _http("POST", f"{s.url}/graphs/g/jobs/stubborn", {})
    assert code == 201
    tid = body["task_id"]
    _until(lambda: _http("GET", f"{s.url}/graphs/g/tasks/{tid}")[1]["task_status"] == "running", "it to run")
    return s, tid


@pytest.mark.parametrize("how", ["a second signal", "the grace"])
def test_a_task_that_ignores_its_interrupt_does_not_hold_the_server_past_its_grace(db_path: str, tmp_path,
                                                                                  how: str) -> None:
    s, tid = _stubborn_server(db_path, tmp_path, "--grace", "1.5")
    try:
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert s.proc.poll() is None, "the grace was not waited"
        started = time.monotonic()
        rc, out, err = s.stop(signal.SIGINT) if how == "a second signal" else s.stop(0)
        assert time.monotonic() - started < (3 if how == "a second signal" else 4)  # the task would run 30 s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(WAIT)
    assert rc == 1 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("taskmgr:")]
    assert len(lines) == 1 and lines[0].startswith("taskmgr: error: ") and "run again on the next start" in lines[0]
    assert "asked to stop" in out
    reader = TaskManager(db_path)
    assert reader.get(tid).status is S.RUNNING  # nothing lost: the next start runs it again
    reader.shutdown()
    again = _serve(db_path, "--tasks", "stubbornjobs", cwd=str(tmp_path))
    try:
        _until(lambda: _http("GET", f"{again.url}/graphs/g/tasks/{tid}")[1]["task_retries"] == 1, "a restore")
    finally:
        again.proc.kill()
        again.proc.wait(WAIT)


def test_serve_on_ipv6_loopback_prints_a_bracketed_url(db_path: str) -> None:
    import socket as _socket

    try:
        with _socket.socket(_socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    s = _serve(db_path, "--host", "::1")
    try:
        assert s.url.startswith("http://[::1]:")
        assert _http("GET", f"{s.url}/versions")[0] == 200
    finally:
        s.stop()
