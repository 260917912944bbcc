"""The store: calls deferred to the next commit, the WAL checkpointer, and lists over part of a
graph's scope."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import WAIT
from taskmgr import TaskManager, TaskStatus
from taskmgr.store import Store

S = TaskStatus

ROW = {"graphspace": "DEFAULT", "graph": "g", "type": "t", "name": "n", "callable": "m.f"}


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "s.db"), synchronous="NORMAL")
    yield s
    s.close()


def _insert(store: Store) -> int:
    return store.write(lambda tx: tx.insert(dict(ROW)))


def _committed(path: str, tid: int) -> bool:
    """Whether another connection sees task ``tid``: whether its transaction has committed."""
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT 1 FROM taskmgr_task WHERE id = ?", (tid,)).fetchone() is not None
    finally:
        con.close()


def test_a_call_deferred_after_a_quiet_spell_runs_at_once_on_the_calling_thread(store: Store) -> None:
    _insert(store)
    time.sleep(2 * store.DEFER_MAX)
    _insert(store)  # the last two commits are further apart than DEFER_MAX: no stream
    ran = []
    store.defer(lambda: ran.append(threading.get_ident()))
    assert ran == [threading.get_ident()]


def test_the_flushers_commits_of_outcomes_do_not_make_a_stream(store: Store, monkeypatch) -> None:
    """A submit that follows the flusher's commit of an outcome (a cancel loop, say) is not in a
    stream: its worker is woken at once, not left for a commit that may not come."""
    monkeypatch.setattr(Store, "DEFER_MAX", 0.05)
    _insert(store)
    time.sleep(0.1)
    flushed = threading.Event()
    store.write_async(lambda tx: tx.insert(dict(ROW)), callback=lambda ok, value: flushed.set())
    assert flushed.wait(WAIT)  # committed by the flusher, just now
    _insert(store)  # 0.1 s after the last commit a caller waited for
    ran = []
    store.defer(lambda: ran.append(1))
    assert ran == [1]


def test_in_a_stream_a_deferred_call_runs_just_before_the_next_commit(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(Store, "DEFER_MAX", 30.0)  # everything is a stream; the flusher never steps in
    _insert(store)
    _insert(store)
    seen = []
    store.defer(lambda: seen.append(("ran", threading.get_ident())))
    assert seen == []  # not yet: it waits for the next commit

    def op(tx):
        tid = tx.insert(dict(ROW))
        seen.append(("op", tid))
        return tid

    tid = store.write(op)
    assert seen[0][0] == "op" and seen[1] == ("ran", threading.get_ident())  # the leader, in that batch
    assert _committed(store.db.database, tid)


def test_a_deferred_call_sees_its_batch_not_yet_committed(store: Store, monkeypatch) -> None:
    """It runs before the COMMIT statement, so that what it starts overlaps the commit's wait."""
    monkeypatch.setattr(Store, "DEFER_MAX", 30.0)
    _insert(store)
    _insert(store)
    box: dict[str, int] = {}
    visible = []
    store.defer(lambda: visible.append(_committed(store.db.database, box["tid"])))

    def op(tx):
        box["tid"] = tx.insert(dict(ROW))

    store.write(op)
    assert visible == [False]
    assert _committed(store.db.database, box["tid"])


def test_a_deferred_call_that_no_commit_takes_is_run_by_the_flusher(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(Store, "DEFER_MAX", 0.05)
    _insert(store)
    _insert(store)
    done = threading.Event()
    where = []
    t0 = time.monotonic()
    store.defer(lambda: (where.append(threading.current_thread().name), done.set()))
    assert done.wait(WAIT)
    assert time.monotonic() - t0 >= 0.05 * 0.9
    assert where == ["taskmgr-flusher"]


def test_close_runs_what_is_still_deferred(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(Store, "DEFER_MAX", 30.0)
    _insert(store)
    _insert(store)
    ran = []
    store.defer(lambda: ran.append(1))
    store.close()
    assert ran == [1]
    store.defer(lambda: ran.append(2))  # closed: at once
    assert ran == [1, 2]


def test_a_failing_deferred_call_does_not_fail_the_commit(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(Store, "DEFER_MAX", 30.0)
    _insert(store)
    _insert(store)
    store.defer(lambda: 1 / 0)
    tid = _insert(store)
    assert _committed(store.db.database, tid)


def test_a_task_whose_worker_waits_for_the_next_commit_can_be_cancelled_meanwhile(tmp_path, monkeypatch) -> None:
    """A stream's task waits, RUNNING, for the next commit to wake its worker; a cancel that comes
    meanwhile reaches it (the cancel's own commit wakes the worker, and the cancel is delivered
    when the callable starts, or to the running callable)."""
    monkeypatch.setattr(Store, "DEFER_MAX", 30.0)  # only a commit wakes them; the flusher never does
    started = {}

    def sleeper(ctx):
        started[ctx.task_id] = True
        ctx.sleep(WAIT)

    # sleepers only, and no housekeeping poll: no commit comes unless the test makes one
    with TaskManager(str(tmp_path / "m.db"), workers=3, poll_interval=60) as m:
        m.register("sleep", sleeper)
        a, b, c = (m.submit("sleep") for _ in range(3))  # each submit's commit wakes the one before
        deadline = time.monotonic() + WAIT
        while not (a in started and b in started) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert a in started and b in started
        assert m.get(c).status is S.RUNNING and c not in started  # committed RUNNING, worker not woken
        for tid in (a, b, c):
            assert m.cancel(tid)
        assert [m.wait(tid, WAIT).status for tid in (a, b, c)] == [S.CANCELLED] * 3


def test_at_normal_a_thread_of_the_store_checkpoints_the_wal_not_the_writers(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(Store, "CHECKPOINT_EVERY", 10)
    store = Store(str(tmp_path / "n.db"), synchronous="NORMAL")
    try:
        writers = store.db.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert writers == Store.CHECKPOINT_BACKSTOP  # the writers' own checkpoint is only a backstop
        for _ in range(50):
            store.write(lambda tx: tx.insert({"graphspace": "g", "graph": "g", "type": "t", "name": "t",
                                              "callable": "m.f", "input": None, "owner": None,
                                              "max_retries": 0, "retry_delay": 1.0, "run_at": None, "ran": 0}))
        deadline = time.monotonic() + WAIT
        while store.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        # woken every 10 commits; wake-ups that come while it checkpoints fold into the next one
        assert 1 <= store.checkpoints <= 5
    finally:
        store.close()
    assert store.threads == []  # close() stops the checkpointer (and the flusher)


def test_at_full_the_committing_connection_checkpoints_as_sqlite_does(tmp_path) -> None:
    store = Store(str(tmp_path / "f.db"), synchronous="FULL")
    try:
        assert [t.name for t in store.threads] == ["taskmgr-flusher"]  # no checkpointer thread
        assert store.db.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # SQLite's default
    finally:
        store.close()


def test_at_normal_the_wal_stays_small_under_a_stream_of_tasks(tmp_path) -> None:
    """The WAL file grows only while no checkpoint completes: at about ten pages a task, 2,000 tasks
    would take it to some 20,000 pages."""
    path = str(tmp_path / "s.db")
    with TaskManager(path, workers=2, synchronous="NORMAL") as m:
        m.register("noop", lambda ctx: None)
        ids = [m.submit("noop") for _ in range(2000)]
        for tid in ids:
            assert m.wait(tid, WAIT).status is S.SUCCESS
        pages = os.path.getsize(path + "-wal") // 4096
    assert pages < Store.CHECKPOINT_BACKSTOP * 1.2, pages


# ------------------------------------------------------------------ lists over part of a graph's scope
_SPACES = ["A", "B", "C"]
_GRAPHS = ["g1", "g2", "g3"]
_PICK = [S.NEW, S.QUEUED, S.RUNNING, S.SUCCESS, S.FAILED]


@pytest.fixture(scope="module")
def scoped(tmp_path_factory):
    """240 tasks over 3 graphspaces and 3 graphs (not every pair: C has no g3) in random statuses, and
    the same rows in memory, to check the store's lists against."""
    import random

    rnd = random.Random(7)
    s = Store(str(tmp_path_factory.mktemp("scoped") / "s.db"), synchronous="OFF")
    rows = []
    for _ in range(240):
        gs = rnd.choice(_SPACES)
        g = rnd.choice(_GRAPHS[:2] if gs == "C" else _GRAPHS)
        status = rnd.choice(_PICK)

        def op(tx, gs=gs, g=g, status=status):
            tid = tx.insert(dict(ROW, graphspace=gs, graph=g))
            s.Task.update(status=status.value).where(s.Task.id == tid).execute()
            return tid

        rows.append((s.write(op), gs, g, status))
    yield s, rows
    s.close()


@settings(max_examples=150, deadline=None)
@given(
    graphspace=st.sampled_from([None, *_SPACES, "nowhere"]),
    graph=st.sampled_from([None, *_GRAPHS, "nothing"]),
    status=st.sampled_from([None, *_PICK, S.CANCELLED]),
    limit=st.sampled_from([-1, 0, 1, 7, 100]),
    after=st.integers(0, 250),
    merge_by_ids=st.sampled_from([10_000, 3]),
)
def test_a_list_over_part_of_a_graphs_scope_is_what_filtering_every_row_gives(
    scoped, graphspace, graph, status, limit, after, merge_by_ids
) -> None:
    """A graph without its graphspace, or a graphspace without a graph, is listed pair by pair and
    merged (see Store.select): the answer is exactly the filtered rows, in id order, cut at limit."""
    store, rows = scoped
    store.MERGE_BY_IDS = merge_by_ids  # both ways of merging: by ids, then rows; or rows themselves
    try:
        got = [t.id for t in store.select(status=status, graphspace=graphspace, graph=graph, after=after,
                                          limit=limit)]
    finally:
        del store.MERGE_BY_IDS
    want = [tid for tid, gs, g, stored in rows
            if tid > after and graphspace in (None, gs) and graph in (None, g) and status in (None, stored)]
    assert got == (want if limit < 0 else want[:limit])


def test_the_distinct_graphspaces_and_graphs_are_found_by_walking_the_index(scoped) -> None:
    store, _rows = scoped
    assert store.graphspaces() == _SPACES
    assert store.graphs("C") == ["g1", "g2"]
    assert store.graphs("nowhere") == []


@pytest.mark.parametrize("scope", [{"graph": "g2"}, {"graph": "g2", "status": S.SUCCESS}, {"graphspace": "B"},
                                   {"graphspace": "B", "status": S.FAILED}, {"status": S.SUCCESS},
                                   {"graphspace": "B", "graph": "g1", "status": S.FAILED}])
def test_a_list_over_part_of_a_graphs_scope_neither_scans_the_table_nor_sorts(scoped, scope) -> None:
    """Every statement such a list runs reads through an index in id order: no full scan of the
    task table, no sort of every match (what made such lists take 45-225 ms over a million rows).
    A status alone too: no index starts with the status and continues with the id."""
    store, _rows = scoped
    conn = store.db.connection()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        store.select(limit=10, **scope)
    finally:
        conn.set_trace_callback(None)
    steps = [r[3] for sql in statements if sql.lstrip().upper().startswith(("SELECT", "WITH"))
             for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    on_tasks = [s for s in steps if re.search(r"\b(t1|taskmgr_task)\b", s)]  # peewee names the table t1
    assert on_tasks
    for step in on_tasks:  # a seek into the (graphspace, graph, ...) indexes, or rows fetched by id
        assert step.startswith("SEARCH") and ("INDEX taskrecord_graphspace_graph_id" in step
                                              or "INDEX taskrecord_status_graphspace_graph_id (status=? AND "
                                                 "graphspace=? AND graph=?" in step
                                              or "INTEGER PRIMARY KEY" in step), step
    assert not any("TEMP B-TREE" in s for s in steps), steps


def test_a_store_made_by_an_earlier_version_gets_todays_indexes_and_keeps_its_tasks(tmp_path) -> None:
    """Opening a file with the indexes of earlier versions drops them and builds today's: nothing
    else changes, and lists answer as before."""
    path = str(tmp_path / "old.db")
    s = Store(path)
    ids = [s.write(lambda tx, g=g: tx.insert(dict(ROW, graph=g))) for g in ("g1", "g2", "g1")]
    s.close()
    con = sqlite3.connect(path)
    with con:
        con.execute("DROP TABLE taskmgr_schema")  # the schema before versions
        con.execute("DROP INDEX taskrecord_status_graphspace_graph_id")
        con.execute("CREATE INDEX taskrecord_graphspace_graph_status_id "
                    "ON taskmgr_task (graphspace, graph, status, id)")
        con.execute('CREATE INDEX taskrecord_status_id ON taskmgr_task (status, id)')
        con.execute('CREATE INDEX taskrecord_status_run_at ON taskmgr_task (status, run_at)')
    con.close()
    s = Store(path)
    try:
        names = {r[0] for r in s.db.execute_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"taskrecord_status_graphspace_graph_id", "taskrecord_graphspace_graph_id"} <= names
        old = {"taskrecord_graphspace_graph_status_id", "taskrecord_status_id", "taskrecord_status_run_at"}
        assert not names & old
        assert [t.id for t in s.select(status=S.NEW)] == ids
        assert [t.id for t in s.select(status=S.NEW, graphspace="DEFAULT", graph="g1")] == [ids[0], ids[2]]
    finally:
        s.close()


def test_a_move_along_a_path_is_one_statement_that_records_every_step(store: Store) -> None:
    tid = _insert(store)
    store.write(lambda tx: tx.move(tid, S.NEW, S.QUEUED))
    store.write(lambda tx: tx.move(tid, S.QUEUED, S.RUNNING))
    changes: list = []
    store.add_listener(changes.extend)

    def op(tx):
        moved = tx.move_path(tid, (S.RUNNING, S.RESTORING, S.QUEUED), owner="n1", restores=1)
        return moved, tx.writes

    assert store.write(op) == (True, 1)  # moved, by one statement of its transaction
    assert changes == [(tid, S.RUNNING, S.RESTORING), (tid, S.RESTORING, S.QUEUED)]
    task, row = store.get(tid), store.write(lambda tx: tx.row(tid))
    assert task.status is S.QUEUED and row["owner"] == "n1" and row["restores"] == 1
    steps = [(h.from_status, h.to_status) for h in store.history(tid)]
    assert steps[-2:] == [(S.RUNNING, S.RESTORING), (S.RESTORING, S.QUEUED)]
    # a compare-and-set from the path's first status: nothing moves from anywhere else
    assert store.write(lambda tx: tx.move_path(tid, (S.RUNNING, S.RESTORING, S.QUEUED))) is False
    assert store.get(tid).status is S.QUEUED


def test_a_move_along_a_path_refuses_a_step_the_table_does_not_allow(store: Store) -> None:
    from taskmgr import InvalidTransition

    tid = _insert(store)
    with pytest.raises(InvalidTransition):
        store.write(lambda tx: tx.move_path(tid, (S.NEW, S.QUEUED, S.SUCCESS)))
    assert store.get(tid).status is S.NEW


def test_rows_reads_the_rows_of_many_ids_as_row_reads_each(store: Store) -> None:
    ids = store.write(lambda tx: tx.insert_many([dict(ROW, name=f"n{i}") for i in range(1_203)]))
    store.write(lambda tx: tx.delete(ids[700]))
    asked = ids[::-1] + [10**9]  # past one statement's 500 ids, in any order, one deleted, one never made
    found = store.write(lambda tx: tx.rows(asked))
    assert sorted(found) == [i for i in ids if i != ids[700]]
    assert all(found[i] == store.write(lambda tx, i=i: tx.row(i)) for i in (ids[0], ids[600], ids[-1]))


# ------------------------------------------------- an interrupt in the leader (Ctrl-C on its thread)
@pytest.fixture
def slow_flusher_store(tmp_path, monkeypatch):
    """A store whose flusher leaves queued outcomes alone for half a second: the next write's batch
    carries them, deterministically."""
    monkeypatch.setattr(Store, "LINGER", 0.5)
    monkeypatch.setattr(Store, "LINGER_MAX", 0.5)
    s = Store(str(tmp_path / "s.db"), synchronous="NORMAL")
    yield s
    s.close()


def _interrupt_after(monkeypatch, statement: str) -> None:
    """The next ``statement`` of a batch runs, then a KeyboardInterrupt is raised as it returns
    (where Python delivers a Ctrl-C: after the call, before the next line)."""
    from taskmgr.store import Tx

    real = Tx._exec
    armed = [True]

    def _exec(self, sql, params=()):
        out = real(self, sql, params)
        if sql == statement and armed[0]:
            armed[0] = False
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(Tx, "_exec", _exec)


def test_an_interrupt_as_the_commit_returns_reports_the_batch_as_committed(slow_flusher_store, monkeypatch) -> None:
    store = slow_flusher_store
    told = []
    store.write_async(lambda tx: tx.insert(dict(ROW)), callback=lambda ok, value: told.append((ok, value)))
    _interrupt_after(monkeypatch, "COMMIT")
    with pytest.raises(KeyboardInterrupt):  # the leader's own caller gets the interrupt
        store.write(lambda tx: tx.insert(dict(ROW)))
    assert told == [(True, 1)]  # committed, and told so (it was "the write was interrupted")
    assert _committed(store.db.database, 1) and _committed(store.db.database, 2)
    assert _insert(store) == 3  # and the store goes on: a new leader


def test_an_interrupt_before_the_commit_reports_the_batch_as_not_written(slow_flusher_store, monkeypatch) -> None:
    store = slow_flusher_store
    told = []
    store.write_async(lambda tx: tx.insert(dict(ROW)), callback=lambda ok, value: told.append((ok, value)))
    _interrupt_after(monkeypatch, "BEGIN IMMEDIATE")
    with pytest.raises(KeyboardInterrupt):
        store.write(lambda tx: tx.insert(dict(ROW)))
    assert len(told) == 1 and told[0][0] is False and "interrupted" in str(told[0][1])
    assert not _committed(store.db.database, 1)
    assert _insert(store) == 1


def test_an_interrupt_in_a_callback_leaves_the_rest_of_the_batch_told_the_truth(slow_flusher_store) -> None:
    store = slow_flusher_store
    told = []

    def interrupted(ok, value):
        told.append((ok, value))
        raise KeyboardInterrupt

    store.write_async(lambda tx: tx.insert(dict(ROW)), callback=interrupted)
    store.write_async(lambda tx: tx.insert(dict(ROW)), callback=lambda ok, value: told.append((ok, value)))
    with pytest.raises(KeyboardInterrupt):
        store.write(lambda tx: tx.insert(dict(ROW)))
    assert told == [(True, 1), (True, 2)]
    assert all(_committed(store.db.database, i) for i in (1, 2, 3))
    assert _insert(store) == 4


def test_a_callback_of_a_committed_batch_may_write_and_wait(store: Store) -> None:
    """A batch's callbacks run on the thread that led it; one that wrote and waited queued its
    write for a leader that was itself (the leader test compared thread ids with ``is``)."""
    done = threading.Event()
    got: list[object] = []

    def callback(ok, value) -> None:
        got.append(store.write(lambda tx: tx.insert(dict(ROW))))
        done.set()

    store.write_async(lambda tx: tx.insert(dict(ROW)), callback=callback)
    assert done.wait(WAIT), "the callback's write waited for its own thread"
    assert got == [2]


def check_fenced_writes(store: Store) -> None:
    """Moves and updates with ``held_by`` change a row only while that node owns it; what they
    refuse leaves the row, its history included, as it was. (Also run on PostgreSQL.)"""
    tid = store.write(lambda tx: tx.insert(dict(ROW, owner="node-b"), (S.NEW, S.QUEUED)))
    before = store.get(tid)
    for node in ("node-b", None):  # another owner; and an unowned row, when held_by names one
        if node is None:
            store.write(lambda tx: tx.update(tid, (S.QUEUED,), owner=None))
            before = store.get(tid)
        assert store.write(lambda tx: tx.move_returning(tid, S.QUEUED, S.RUNNING, held_by="node-a", ran=1)) is None
        assert not store.write(lambda tx: tx.move(tid, S.QUEUED, S.RUNNING, held_by="node-a"))
        assert not store.write(lambda tx: tx.update(tid, (S.QUEUED,), held_by="node-a", progress=9))
        assert store.get(tid) == before
        store.write(lambda tx: tx.update(tid, (S.QUEUED,), owner="node-a"))
        before = store.get(tid)
    row = store.write(lambda tx: tx.move_returning(tid, S.QUEUED, S.RUNNING, held_by="node-a", ran=1))
    assert row is not None and (row["status"], row["owner"], row["ran"]) == ("running", "node-a", 1)
    assert store.write(lambda tx: tx.update(tid, (S.RUNNING,), held_by="node-a", progress=40))
    assert store.write(lambda tx: tx.move(tid, S.RUNNING, S.SUCCESS, held_by="node-a", result="1"))
    done = store.get(tid)
    assert (done.status, done.progress, done.result) == (S.SUCCESS, 40, "1")
    assert [(t.from_status, t.to_status) for t in store.history(tid)] == [
        (None, S.NEW), (S.NEW, S.QUEUED), (S.QUEUED, S.RUNNING), (S.RUNNING, S.SUCCESS)]


def test_writes_fenced_by_the_owner_change_only_the_owners_row(store: Store) -> None:
    check_fenced_writes(store)
