"""A read-only open (what the CLI's read commands need): it never creates or changes anything, not
even the journal mode, runs no thread, refuses every write, and works where nothing can be written:
a read-only file or a read-only filesystem."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from taskmgr import StoreError, TaskManager, TaskStatus
from taskmgr.store import Store, open_sqlite

S = TaskStatus
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "taskmgr-v1.db")
ROW = {"graphspace": "DEFAULT", "graph": "g", "type": "t", "name": "n", "callable": "m.f"}


def _digest(path: str) -> tuple[str, list[str]]:
    """The file's bytes, and what lies beside it. A reader of a WAL file may leave SQLite's empty
    ``-wal`` and its ``-shm`` beside it (as any reader of a live WAL database does): not counted."""
    with open(path, "rb") as f:
        content = hashlib.sha256(f.read()).hexdigest()
    base = os.path.basename(path)
    wal = path + "-wal"
    assert not os.path.exists(wal) or os.path.getsize(wal) == 0  # nothing was written to it
    return content, sorted(n for n in os.listdir(os.path.dirname(path))
                           if n.startswith(base) and n not in (base + "-wal", base + "-shm"))


@pytest.fixture
def made(tmp_path) -> tuple[str, list[int]]:
    """A task database of this version, closed: two tasks, one finished."""
    path = str(tmp_path / "tasks.db")
    with TaskManager(path, executor="inline") as m:
        m.register("echo", lambda ctx: ctx.input)
        ids = [m.submit("echo", {"n": 1}), m.submit("echo", [2])]
    return path, ids


def test_a_read_only_open_reads_everything_and_changes_nothing(made) -> None:
    path, ids = made
    before = _digest(path)
    store = Store(path, readonly=True)
    try:
        assert [t.id for t in store.select()] == ids
        assert store.get(ids[0]).result_value == {"n": 1}
        assert store.statuses(ids) == dict.fromkeys(ids, S.SUCCESS)
        assert {h.task_id for h in store.history()} == set(ids)
        assert store.threads == []  # no flusher, no checkpointer
        assert store.readonly
    finally:
        store.close()
    assert _digest(path) == before


def test_a_read_only_open_sees_what_a_writer_commits_meanwhile(made) -> None:
    path, ids = made
    reader = Store(path, readonly=True)
    writer = Store(path)
    try:
        tid = writer.write(lambda tx: tx.insert(dict(ROW)))
        assert reader.get(tid).status is S.NEW
    finally:
        writer.close()
        reader.close()


def test_every_write_of_a_read_only_store_is_refused(made) -> None:
    path, ids = made
    before = _digest(path)
    store = Store(path, readonly=True)
    try:
        for write in (lambda: store.write(lambda tx: tx.insert(dict(ROW))),
                      lambda: store.write_async(lambda tx: None),
                      lambda: store.register_node("n", 0),
                      lambda: store.heartbeat("n"),
                      lambda: store.remove_node("n"),
                      lambda: store.prune_history(10**15)):
            with pytest.raises(StoreError, match="read-only"):
                write()
        ran: list[int] = []
        store.defer(lambda: ran.append(1))  # nothing will commit: at once
        assert ran == [1]
    finally:
        store.close()
    assert _digest(path) == before


def test_a_read_only_open_never_creates_a_file(tmp_path) -> None:
    path = str(tmp_path / "missing.db")
    with pytest.raises(StoreError, match="no task database at .*missing.db.*read-only"):
        Store(path, readonly=True)
    with pytest.raises(StoreError, match="read-only"):
        open_sqlite(path, "FULL", 5.0, readonly=True)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("statements", [
    [],  # an empty file
    ["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"],  # another application's
    ["CREATE TABLE taskmgr_task (id INTEGER PRIMARY KEY, title TEXT)"],  # another application's by our name
])
def test_a_read_only_open_of_a_file_that_is_no_task_database_is_refused_untouched(tmp_path, statements) -> None:
    path = str(tmp_path / "other.db")
    con = sqlite3.connect(path)
    for statement in statements:
        con.execute(statement)
    con.commit()
    con.close()
    before = _digest(path)
    with pytest.raises(StoreError, match="is not a taskmgr database"):
        Store(path, readonly=True)
    assert _digest(path) == before
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


def test_a_read_only_open_of_a_database_still_to_migrate_says_how(tmp_path) -> None:
    path = str(tmp_path / "v1.db")
    shutil.copyfile(FIXTURE, path)
    before = _digest(path)
    with pytest.raises(StoreError, match="schema version 1, older than this taskmgr's 2: run a writable open"):
        Store(path, readonly=True)
    assert _digest(path) == before
    Store(path).close()  # migrated
    store = Store(path, readonly=True)
    try:
        assert len(store.select()) == 22
    finally:
        store.close()


def test_a_database_the_host_opened_can_be_read_only_too(made) -> None:
    from peewee import SqliteDatabase

    path, ids = made
    db = SqliteDatabase(path)
    store = Store(db, readonly=True)
    try:
        assert [t.id for t in store.select()] == ids
        with pytest.raises(StoreError, match="read-only"):
            store.write(lambda tx: None)
    finally:
        store.close()
        db.close()


# ------------------------------------------------------------- where nothing can be written at all
_READ = textwrap.dedent("""
    import json, sys
    from taskmgr.store import Store
    s = Store(sys.argv[1], readonly=True)
    try:
        print(json.dumps([[t.id, t.status.value] for t in s.select()]))
    finally:
        s.close()
""")


def _in_a_read_only_place(tmp_path, source: str, how: str) -> subprocess.CompletedProcess:
    """Run ``_READ`` on a copy of ``source`` made read-only by a mount of a private mount namespace
    (as root, chmod alone does not stop writes): ``how`` is "filesystem" (a tmpfs remounted
    read-only: neither the file nor its directory can be written) or "file" (the file alone, bound
    read-only over itself, in a writable directory)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) here to make a private mount namespace")
    place = tmp_path / "ro"
    place.mkdir()
    db = place / "tasks.db"
    if how == "filesystem":
        script = (f"mount -t tmpfs -o size=16m none {place} && cp {source} {db} && "
                  f"mount -o remount,ro {place} && ! touch {place}/probe 2>/dev/null")
    else:
        script = (f"cp {source} {db} && mount --bind {db} {db} && mount -o remount,ro,bind {db} && "
                  f"! sh -c 'echo x >> {db}' 2>/dev/null && touch {place}/probe")
    probe = subprocess.run([unshare, "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only {how} here (unshare/mount refused): {probe.stderr.strip()[:200]}")
    shutil.rmtree(place)
    place.mkdir()
    run = subprocess.run([unshare, "--mount", "sh", "-c", f'{script} && exec "$0" -c "$1" "$2"',
                          sys.executable, _READ, str(db)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return run


@pytest.mark.parametrize("how", ["filesystem", "file"])
def test_a_read_only_open_works_on_a_read_only_file_or_filesystem(made, tmp_path, how) -> None:
    path, ids = made
    run = _in_a_read_only_place(tmp_path, path, how)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [[tid, "success"] for tid in ids]
