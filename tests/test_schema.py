"""The versioned schema: a database left by version 1 (tests/data/taskmgr-v1.db, made by the code of
that version) opens with every record and its history intact, its unfinished tasks are restored and
run, opening is idempotent and safe from two processes at once, and a newer database is refused."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading

import pytest

from conftest import WAIT
from taskmgr import StoreError, TaskContext, TaskManager, TaskStatus
from taskmgr.store import Store
from taskmgr.testing import check_history

S = TaskStatus
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "taskmgr-v1.db")
DEAD = "fixture-host:4242:0f0f0f0f"

# What the code of version 1 (commit c5930bc) read from the fixture: Store.select(), then
# Store.history(), then each row's bookkeeping. Recorded, not recomputed by the code under test.
# (id, type, name, status, progress, created, updated, result, retries, callable, input, graph, graphspace)
TASKS = [
    (1, 'fixture.echo', 'fixture.echo job', 'SUCCESS', 100, 1700000001000, 1700000002000, '{"k":1}', 0, 'fixtures.echo', '1', 'g', 'DEFAULT'),
    (2, 'fixture.echo', 'fixture.echo job', 'SUCCESS', 3, 1700000003000, 1700000004000, '8', 0, 'fixtures.echo', '{"n":8}', 'g', 'DEFAULT'),
    (3, 'fixture.echo', 'fixture.echo job', 'SUCCESS', 0, 1700000005000, 1700000005000, '[]', 0, 'fixtures.echo', '[]', 'g', 'DEFAULT'),
    (4, 'fixture.fail', 'fixture.fail job', 'FAILED', 7, 1700000006000, 1700000011000, 'ValueError: bad input', 1, 'fixtures.fail', '1', 'g', 'DEFAULT'),
    (5, 'fixture.echo', 'fixture.echo job', 'CANCELLED', 0, 1700000012000, 1700000013000, None, 0, 'fixtures.echo', '1', 'g', 'DEFAULT'),
    (6, 'fixture.echo', 'fixture.echo job', 'CANCELLED', 2, 1700000014000, 1700000014000, None, 0, 'fixtures.echo', '1', 'g', 'DEFAULT'),
    (7, 'fixture.echo', 'fixture.echo job', 'NEW', 0, 1700000015000, 1700000015000, None, 0, 'fixtures.echo', '{"who":"idle"}', 'g', 'DEFAULT'),
    (8, 'fixture.echo', 'fixture.echo job', 'RESTORING', 0, 1700000016000, 1700000016000, None, 0, 'fixtures.echo', '"handed back"', 'g', 'DEFAULT'),
    (9, 'fixture.echo', 'fixture.echo job', 'PENDING', 0, 1700000017000, 1700000017000, None, 0, 'fixtures.echo', '"suspended"', 'g', 'DEFAULT'),
    (10, 'fixture.echo', 'fixture.echo job', 'SCHEDULING', 0, 1700000018000, 1700000018000, None, 0, 'fixtures.echo', '"scheduling"', 'g', 'DEFAULT'),
    (11, 'fixture.echo', 'fixture.echo job', 'SCHEDULED', 0, 1700000019000, 1700000019000, None, 0, 'fixtures.echo', '"scheduled"', 'g', 'DEFAULT'),
    (12, 'fixture.echo', 'fixture.echo job', 'QUEUED', 0, 1700000020000, 1700000020000, None, 0, 'fixtures.echo', '"queued"', 'g', 'DEFAULT'),
    (13, 'fixture.echo', 'fixture.echo job', 'QUEUED', 0, 1700000021000, 1700000021000, None, 0, 'fixtures.echo', '"queued in another graph"', 'h', 'SPACE2'),
    (14, 'fixture.echo', 'fixture.echo job', 'PENDING', 0, 1700000022000, 1700000022000, None, 0, 'fixtures.echo', '"delayed"', 'g', 'DEFAULT'),
    (15, 'fixture.echo', 'fixture.echo job', 'PENDING', 0, 1700000023000, 1700000023000, None, 0, 'fixtures.echo', '"suspended, owned"', 'g', 'DEFAULT'),
    (16, 'fixture.echo', 'fixture.echo job', 'RUNNING', 40, 1700000024000, 1700000024000, None, 0, 'fixtures.echo', '"running"', 'g', 'DEFAULT'),
    (17, 'fixture.echo', 'fixture.echo job', 'RESTORING', 5, 1700000026000, 1700000027000, None, 0, 'fixtures.echo', '"interrupted"', 'g', 'DEFAULT'),
    (18, 'fixture.echo', 'fixture.echo job', 'CANCELLING', 10, 1700000028000, 1700000028000, None, 0, 'fixtures.echo', '"cancelling"', 'g', 'DEFAULT'),
    (19, 'fixture.fail', 'fixture.fail job', 'PENDING', 0, 1700000029000, 1700000030000, 'ValueError: bad input', 0, 'fixtures.fail', '1', 'g', 'DEFAULT'),
    (20, 'fixture.echo', 'fixture.echo job', 'UNKNOWN', 0, 1700000031000, 1700000031000, "UnknownTaskType: task type 'fixture.echo' is not registered in the process that restored it; register it and call resume() on the task (or restart)", 0, 'fixtures.echo', '"unregistered"', 'g', 'DEFAULT'),
    (21, 'fixture.echo', 'fixture.echo job', 'UNKNOWN', 0, 1700000032000, 1700000032000, 'InvalidInput: the stored task_input is not valid JSON', 0, 'fixtures.echo', 'not json', 'g', 'DEFAULT'),
    (22, 'fixture.echo', 'fixture.echo job', 'SUCCESS', 0, 1700000033000, 1700000033000, '"done"', 0, 'fixtures.echo', '1', 'h', 'SPACE2'),
]
# (task_id, from, to, at): tasks 1-3 merge the old taskmgr_history table's rows into the row's own
# entries by time, the table's first on a tie (task 1's last two), a table row between two of the
# row's entries (task 2), the table alone (task 3)
HISTORY = [
    (1, None, 'NEW', 1700000001000), (1, 'NEW', 'QUEUED', 1700000001001), (1, 'QUEUED', 'RUNNING', 1700000001002),
    (1, 'RUNNING', 'SUCCESS', 1700000001002),
    (2, None, 'NEW', 1700000003000), (2, 'NEW', 'QUEUED', 1700000003000), (2, 'QUEUED', 'RUNNING', 1700000004000),
    (2, 'RUNNING', 'SUCCESS', 1700000005000),
    (3, None, 'NEW', 1700000005000), (3, 'NEW', 'QUEUED', 1700000005001), (3, 'QUEUED', 'RUNNING', 1700000005002),
    (3, 'RUNNING', 'SUCCESS', 1700000005003),
    (4, None, 'NEW', 1700000006000), (4, 'NEW', 'QUEUED', 1700000006000), (4, 'QUEUED', 'RUNNING', 1700000006000),
    (4, 'RUNNING', 'PENDING', 1700000007000), (4, 'PENDING', 'RESTORING', 1700000008000),
    (4, 'RESTORING', 'QUEUED', 1700000009000), (4, 'QUEUED', 'RUNNING', 1700000010000),
    (4, 'RUNNING', 'FAILED', 1700000011000),
    (5, None, 'NEW', 1700000012000), (5, 'NEW', 'CANCELLED', 1700000013000),
    (6, None, 'NEW', 1700000014000), (6, 'NEW', 'QUEUED', 1700000014000), (6, 'QUEUED', 'RUNNING', 1700000014000),
    (6, 'RUNNING', 'CANCELLING', 1700000014000), (6, 'CANCELLING', 'CANCELLED', 1700000014000),
    (7, None, 'NEW', 1700000015000),
    (8, None, 'NEW', 1700000016000), (8, 'NEW', 'QUEUED', 1700000016000), (8, 'QUEUED', 'RESTORING', 1700000016000),
    (9, None, 'NEW', 1700000017000), (9, 'NEW', 'PENDING', 1700000017000),
    (10, None, 'NEW', 1700000018000), (10, 'NEW', 'SCHEDULING', 1700000018000),
    (11, None, 'NEW', 1700000019000), (11, 'NEW', 'SCHEDULING', 1700000019000),
    (11, 'SCHEDULING', 'SCHEDULED', 1700000019000),
    (12, None, 'NEW', 1700000020000), (12, 'NEW', 'QUEUED', 1700000020000),
    (13, None, 'NEW', 1700000021000), (13, 'NEW', 'QUEUED', 1700000021000),
    (14, None, 'NEW', 1700000022000), (14, 'NEW', 'PENDING', 1700000022000),
    (15, None, 'NEW', 1700000023000), (15, 'NEW', 'PENDING', 1700000023000),
    (16, None, 'NEW', 1700000024000), (16, 'NEW', 'QUEUED', 1700000024000), (16, 'QUEUED', 'RUNNING', 1700000024000),
    (17, None, 'NEW', 1700000026000), (17, 'NEW', 'QUEUED', 1700000026000), (17, 'QUEUED', 'RUNNING', 1700000026000),
    (17, 'RUNNING', 'RESTORING', 1700000027000),
    (18, None, 'NEW', 1700000028000), (18, 'NEW', 'QUEUED', 1700000028000), (18, 'QUEUED', 'RUNNING', 1700000028000),
    (18, 'RUNNING', 'CANCELLING', 1700000028000),
    (19, None, 'NEW', 1700000029000), (19, 'NEW', 'QUEUED', 1700000029000), (19, 'QUEUED', 'RUNNING', 1700000029000),
    (19, 'RUNNING', 'PENDING', 1700000030000),
    (20, None, 'NEW', 1700000031000), (20, 'NEW', 'QUEUED', 1700000031000), (20, 'QUEUED', 'UNKNOWN', 1700000031000),
    (21, None, 'NEW', 1700000032000), (21, 'NEW', 'UNKNOWN', 1700000032000),
    (22, None, 'NEW', 1700000033000), (22, 'NEW', 'QUEUED', 1700000033000), (22, 'QUEUED', 'RUNNING', 1700000033000),
    (22, 'RUNNING', 'SUCCESS', 1700000033000),
]
# id: (owner, run_at, ran, restores, max_retries, retry_delay)
BOOKKEEPING = {
    1: (DEAD, None, 1, 0, 0, 1.0), 2: (DEAD, None, 1, 0, 0, 1.0), 3: (None, None, 0, 0, 0, 1.0),
    4: (DEAD, None, 1, 0, 1, 1.0), 5: (None, None, 0, 0, 0, 1.0), 6: (None, None, 0, 0, 0, 1.0),
    7: (None, None, 0, 0, 0, 1.0), 8: (None, None, 0, 0, 0, 1.0), 9: (None, None, 0, 0, 0, 1.0),
    10: (DEAD, None, 0, 0, 0, 1.0), 11: (DEAD, None, 0, 0, 0, 1.0), 12: (DEAD, None, 0, 0, 0, 1.0),
    13: (DEAD, None, 0, 0, 0, 1.0), 14: (DEAD, 1700000060000, 0, 0, 0, 1.0), 15: (DEAD, None, 0, 0, 0, 1.0),
    16: (DEAD, None, 1, 0, 0, 1.0), 17: (None, None, 1, 0, 0, 1.0), 18: (DEAD, None, 1, 0, 0, 1.0),
    19: (DEAD, 1700000002000, 1, 0, 2, 1.0), 20: (None, None, 0, 0, 0, 1.0), 21: (None, None, 0, 0, 0, 1.0),
    22: (None, None, 0, 0, 0, 1.0),
}
# (node, host, pid, started, heartbeat)
NODES = [(DEAD, 'fixture-host', 4242, 1700000000000, 1700000000000)]


@pytest.fixture
def v1_copy(tmp_path) -> str:
    path = str(tmp_path / "v1.db")
    shutil.copyfile(FIXTURE, path)
    return path


def _tables(path: str) -> set[str]:
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def _as_read(store: Store) -> tuple[list, list, dict, list]:
    tasks = [(t.id, t.type, t.name, t.status.name, t.progress, t.created, t.updated, t.result, t.retries,
              t.callable, t.input, t.graph, t.graphspace) for t in store.select()]
    history = [(h.task_id, None if h.from_status is None else h.from_status.name, h.to_status.name, h.at)
               for h in store.history()]
    rows = store.write(lambda tx: tx.rows([t[0] for t in tasks]))
    book = {tid: (r["owner"], r["run_at"], r["ran"], r["restores"], r["max_retries"], r["retry_delay"])
            for tid, r in rows.items()}
    nodes = [(n.node, n.host, n.pid, n.started, n.heartbeat) for n in store.Node.select()]
    return tasks, history, book, nodes


def test_the_fixture_is_a_database_of_version_1() -> None:
    assert _tables(FIXTURE) == {"taskmgr_task", "taskmgr_history", "taskmgr_node", "sqlite_sequence"}


def test_a_version_1_database_opens_with_every_record_and_its_history_intact(v1_copy: str) -> None:
    store = Store(v1_copy)
    try:
        assert store.schema_version == 2
        assert _as_read(store) == (TASKS, HISTORY, BOOKKEEPING, NODES)
        assert check_history(store.history())  # every task's changes in order, each allowed by the table
        node = store.Node.get()
        assert (node.lease_ms, node.identity) == (None, None)  # judged by the reaper's timeout
    finally:
        store.close()
    assert "taskmgr_history" not in _tables(v1_copy)  # merged into the rows, and dropped
    assert "taskmgr_schema" in _tables(v1_copy)


def test_opening_it_again_changes_nothing(v1_copy: str) -> None:
    Store(v1_copy).close()
    con = sqlite3.connect(v1_copy)
    schema_before = con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    recorded = con.execute("SELECT name FROM taskmgr_schema ORDER BY id").fetchall()
    con.close()
    for _ in range(2):
        store = Store(v1_copy)
        try:
            assert _as_read(store) == (TASKS, HISTORY, BOOKKEEPING, NODES)
        finally:
            store.close()
    con = sqlite3.connect(v1_copy)
    assert con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall() == schema_before
    assert con.execute("SELECT name FROM taskmgr_schema ORDER BY id").fetchall() == recorded == [
        ("0001_v1",), ("0002_node_lease_history_in_rows",)]
    con.close()


def test_a_migration_completes_what_an_earlier_open_began(v1_copy: str) -> None:
    """A file opened by a build between versions already has the node columns: migration 2 adds
    only what is missing."""
    con = sqlite3.connect(v1_copy)
    with con:
        con.execute("ALTER TABLE taskmgr_node ADD COLUMN lease_ms BIGINT")
    con.close()
    store = Store(v1_copy)
    try:
        assert _as_read(store) == (TASKS, HISTORY, BOOKKEEPING, NODES)
    finally:
        store.close()


def _schema(path: str) -> tuple[dict, set]:
    con = sqlite3.connect(path)
    try:
        tables = {name: con.execute(f"PRAGMA table_info({name})").fetchall()
                  for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = set(con.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index'"))
        return tables, indexes
    finally:
        con.close()


def test_a_migrated_database_has_the_schema_of_a_new_one(v1_copy: str, tmp_path) -> None:
    new = str(tmp_path / "new.db")
    Store(new).close()
    Store(v1_copy).close()
    migrated, fresh = _schema(v1_copy), _schema(new)
    assert migrated[0].keys() == fresh[0].keys()
    for table in fresh[0]:
        if table != "taskmgr_schema":  # its ``applied`` times differ, not its columns
            assert migrated[0][table] == fresh[0][table], table
    assert migrated[1] == fresh[1]


def test_a_database_newer_than_the_code_is_refused_untouched(v1_copy: str) -> None:
    Store(v1_copy).close()
    con = sqlite3.connect(v1_copy)
    with con:
        con.execute("INSERT INTO taskmgr_schema (name, applied) VALUES ('0003_from_the_future', '2030-01-01')")
    before = con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    con.close()
    with pytest.raises(StoreError) as caught:
        Store(v1_copy)
    text = str(caught.value)
    assert "schema version 3" in text and "this taskmgr's 2" in text and "upgrade taskmgr" in text, text
    con = sqlite3.connect(v1_copy)
    assert con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall() == before
    con.close()


_OPEN = """
import sys
from taskmgr.store import Store
s = Store(sys.argv[1], busy_timeout=30)
print(s.schema_version, len(s.select()), len(s.history()))
s.close()
"""


def test_two_processes_opening_a_version_1_copy_at_once_both_succeed(v1_copy: str) -> None:
    children = [subprocess.Popen([sys.executable, "-c", _OPEN, v1_copy], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=HERE) for _ in range(2)]
    outs = [child.communicate(timeout=60) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err for _out, err in outs]
    assert [out.split() for out, _err in outs] == [["2", str(len(TASKS)), str(len(HISTORY))]] * 2
    store = Store(v1_copy)
    try:  # migrated once: nothing merged twice
        assert _as_read(store) == (TASKS, HISTORY, BOOKKEEPING, NODES)
    finally:
        store.close()


# -------------------------------------------------------------------- its unfinished tasks, restored
def test_its_unfinished_tasks_are_restored_by_a_started_manager_and_run(v1_copy: str) -> None:
    runs: list[int] = []
    lock = threading.Lock()

    def echo(ctx: TaskContext) -> object:
        with lock:
            runs.append(ctx.task_id)
        return ctx.input

    def fail(ctx: TaskContext) -> None:
        with lock:
            runs.append(ctx.task_id)
        raise ValueError("bad input")

    m = TaskManager(v1_copy, poll_interval=0.05)
    m.register("fixture.echo", echo)
    m.register("fixture.fail", fail)
    with m:
        ran = [7, 8, 10, 11, 12, 13, 14, 16, 17, 20]  # new, restoring, scheduling ... unknown of a type now known
        done = {tid: m.wait(tid, WAIT) for tid in ran}
        assert all(t.status is S.SUCCESS for t in done.values()), done
        assert {tid: t.result_value for tid, t in done.items()} == {
            7: {"who": "idle"}, 8: "handed back", 10: "scheduling", 11: "scheduled", 12: "queued",
            13: "queued in another graph", 14: "delayed", 16: "running", 17: "interrupted", 20: "unregistered"}
        assert (done[16].retries, done[16].progress) == (1, 40)  # it had started: its re-run is a retry
        assert done[17].retries == 1
        assert m.wait(18, WAIT).status is S.CANCELLED  # cancelling when its node died
        retried = m.wait(19, WAIT)  # its retry came due long ago: run, failed, retried once more
        assert (retried.status, retried.retries, retried.result) == (S.FAILED, 2, "ValueError: bad input")
        for tid in (9, 15):  # suspended by request: they wait for resume()
            assert m.get(tid).status is S.PENDING
        assert m.get(21).status is S.UNKNOWN  # a damaged record: only resume() brings it back
        for task in TASKS:
            if S[task[3]].terminal:
                assert m.get(task[0]).status is S[task[3]]
        check_history(m.history())
    assert sorted(runs) == sorted(ran + [19, 19])  # each once; the failing one twice (its retries)


# -------------------------------------------------------------------- another application's database
def _foreign(path: str, *statements: str) -> list:
    con = sqlite3.connect(path)
    with con:
        for statement in statements:
            con.execute(statement)
    schema = con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    con.close()
    return schema


def _unchanged(path: str, schema: list) -> None:
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall() == schema
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # never switched to WAL
    finally:
        con.close()
    assert not os.path.exists(path + "-wal")


def test_another_applications_task_table_is_refused_before_anything_changes(tmp_path) -> None:
    """Its taskmgr_task has other columns: SQLite reads each missing double-quoted column as a string
    literal, so it used to list made-up tasks (and the open added tables and switched it to WAL)."""
    path = str(tmp_path / "app.db")
    schema = _foreign(path, "CREATE TABLE taskmgr_task (id INTEGER PRIMARY KEY, title TEXT, done INTEGER)",
                      "INSERT INTO taskmgr_task (title, done) VALUES ('buy milk', 0)",
                      "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    for open_it in (lambda: Store(path), lambda: TaskManager(path)):
        with pytest.raises(StoreError) as caught:
            open_it()
        text = str(caught.value)
        assert "is not a taskmgr database" in text and path in text, text
        assert "taskmgr_task" in text and "graphspace" in text and "status" in text, text  # what is missing
        _unchanged(path, schema)


def test_a_view_by_the_name_of_a_taskmgr_table_is_refused(tmp_path) -> None:
    path = str(tmp_path / "view.db")
    schema = _foreign(path, "CREATE TABLE t (a)", "CREATE VIEW taskmgr_node AS SELECT a FROM t")
    with pytest.raises(StoreError, match="is not a taskmgr database: taskmgr_node is a view"):
        Store(path)
    _unchanged(path, schema)


def test_another_applications_node_table_is_refused(v1_copy: str) -> None:
    con = sqlite3.connect(v1_copy)
    with con:
        con.execute("DROP TABLE taskmgr_node")
        con.execute("CREATE TABLE taskmgr_node (id INTEGER PRIMARY KEY, hostname TEXT)")
    con.close()
    with pytest.raises(StoreError, match="taskmgr_node lacks the columns node, host, pid, started, heartbeat"):
        Store(v1_copy)
    assert "taskmgr_history" in _tables(v1_copy)  # nothing migrated


def test_a_database_the_host_opened_is_checked_too(tmp_path) -> None:
    from peewee import SqliteDatabase

    path = str(tmp_path / "host.db")
    schema = _foreign(path, "CREATE TABLE taskmgr_task (id INTEGER PRIMARY KEY, title TEXT)")
    db = SqliteDatabase(path)
    try:
        with pytest.raises(StoreError, match="is not a taskmgr database"):
            Store(db)
    finally:
        db.close()
    _unchanged(path, schema)


def test_another_applications_migrations_in_taskmgr_schema_are_not_taken_for_a_newer_version(tmp_path) -> None:
    path = str(tmp_path / "s.db")
    Store(path).close()
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE taskmgr_schema SET name = '0001_create_users' WHERE name = '0001_v1'")
    con.close()
    with pytest.raises(StoreError, match="not a taskmgr database: taskmgr_schema records migrations that are not "
                                         "taskmgr's: 0001_create_users"):
        Store(path)
