"""The CLI's read commands (``list``, ``show``) open the file read-only: they never add tables to
another application's file, never switch its journal mode, and work where nothing can be written."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from taskmgr import TaskManager

HERE = os.path.dirname(os.path.abspath(__file__))


def _taskmgr(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "taskmgr", *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def _state(path: str) -> tuple[str, list[str]]:
    """The file's bytes and the names beside it."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return digest, sorted(os.listdir(os.path.dirname(path)))


@pytest.fixture
def foreign(tmp_path) -> str:
    """Another application's SQLite file, in rollback-journal mode, with a table named like ours."""
    path = str(tmp_path / "app.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("CREATE TABLE taskmgr_task (id INTEGER PRIMARY KEY, title TEXT)")
        db.execute("INSERT INTO taskmgr_task (title) VALUES ('not ours')")
    return path


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["show", "1"]])
def test_read_commands_leave_another_applications_file_exactly_as_it_was(foreign: str, command) -> None:
    before = _state(foreign)
    run = _taskmgr(*command, "--db", foreign)
    assert run.returncode == 1
    assert run.stderr.startswith("taskmgr: error: ") and "not a taskmgr database" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert _state(foreign) == before  # no table added, no journal switched to WAL, no -wal file
    with sqlite3.connect(foreign) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")] == [
            "taskmgr_task", "users"]


def test_read_commands_change_nothing_in_a_task_database(tmp_path) -> None:
    path = str(tmp_path / "tasks.db")
    with TaskManager(path, executor="inline") as m:
        m.register("echo", lambda ctx: ctx.input)
        tid = m.submit("echo", {"n": 1}, name="an echo")
    before = _state(path)
    listing = _taskmgr("list", "--db", path)
    shown = _taskmgr("show", str(tid), "--db", path)
    assert listing.returncode == 0 and "an echo" in listing.stdout, listing.stderr
    assert shown.returncode == 0 and "SUCCESS" in shown.stdout, shown.stderr
    digest, names = _state(path)
    assert digest == before[0]
    assert [n for n in names if n not in ("tasks.db-wal", "tasks.db-shm")] == [
        n for n in before[1] if n not in ("tasks.db-wal", "tasks.db-shm")]


def test_list_works_on_a_read_only_filesystem(tmp_path) -> None:
    """As root, chmod does not stop writes: a tmpfs remounted read-only in a private mount
    namespace does."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) here to make a private mount namespace")
    source = str(tmp_path / "tasks.db")
    with TaskManager(source, executor="inline") as m:
        m.register("echo", lambda ctx: ctx.input)
        m.submit("echo", 1, name="readable")
    place = tmp_path / "ro"
    place.mkdir()
    db = place / "tasks.db"
    script = (f"mount -t tmpfs -o size=16m none {place} && cp {source} {db} && mount -o remount,ro {place} && "
              f"! touch {place}/probe 2>/dev/null")
    probe = subprocess.run([unshare, "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only filesystem here: {probe.stderr.strip()[:200]}")
    run = subprocess.run([unshare, "--mount", "sh", "-c", f'{script} && exec "$0" -m taskmgr list --db "$1"',
                          sys.executable, str(db)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 0, run.stderr
    assert "readable" in run.stdout
