"""The history of status changes: kept in each task's row, written by the statement that makes the
change; pruned by age; and the history table of earlier versions, merged into the rows when the
database opens (tests/test_schema.py has a whole database of such a version)."""

from __future__ import annotations

import sqlite3

import pytest

from taskmgr import InvalidTransition, TaskStatus
from taskmgr.store import Store
from taskmgr.task import Transition
from taskmgr.testing import check_history

S = TaskStatus
ROW = {"graphspace": "DEFAULT", "graph": "g", "type": "t", "name": "n", "callable": "m.f"}


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = Store(str(tmp_path / "h.db"), synchronous="OFF", clock=clock)
    yield s
    s.close()


def _new(store: Store, path=(S.NEW, S.QUEUED)) -> int:
    return store.write(lambda tx: tx.insert(dict(ROW), path))


def _moves(store: Store, tid: int) -> list[tuple]:
    return [(t.from_status, t.to_status, t.at) for t in store.history(tid)]


def test_a_task_records_its_creation_path_and_each_move_with_the_batch_time(store, clock) -> None:
    tid = _new(store, (S.NEW, S.QUEUED, S.RUNNING))
    clock.t += 1.5
    assert store.write(lambda tx: tx.move(tid, S.RUNNING, S.SUCCESS, result="true"))
    assert _moves(store, tid) == [(None, S.NEW, 1_000_000_000), (S.NEW, S.QUEUED, 1_000_000_000),
                                  (S.QUEUED, S.RUNNING, 1_000_000_000), (S.RUNNING, S.SUCCESS, 1_000_001_500)]
    assert all(isinstance(t, Transition) and t.task_id == tid for t in store.history(tid))


def test_a_refused_move_leaves_neither_the_status_nor_the_history_changed(store) -> None:
    tid = _new(store)

    def moved_then_refused(tx):
        assert tx.move(tid, S.QUEUED, S.RUNNING)
        raise InvalidTransition(tid, S.RUNNING, S.NEW)

    with pytest.raises(InvalidTransition):
        store.write(moved_then_refused)
    assert store.get(tid).status is S.QUEUED
    assert [t.to_status for t in store.history(tid)] == [S.NEW, S.QUEUED]


def test_a_damaged_status_of_any_text_is_recorded_as_it_was(store) -> None:
    raw = 'bro"ken\n\\ \u2028 é ]'
    tid = _new(store)
    store.write(lambda tx: tx.execute("UPDATE taskmgr_task SET status = ? WHERE id = ?", (raw, tid)))
    assert store.write(lambda tx: tx.move_from_stored(tid, raw, S.UNKNOWN, result="damaged"))
    assert store.history(tid)[-1][1:3] == (raw, S.UNKNOWN)


def test_every_tasks_history_comes_task_by_task_each_oldest_first(store) -> None:
    a, b = _new(store), _new(store)
    store.write(lambda tx: tx.move(b, S.QUEUED, S.RUNNING))
    store.write(lambda tx: tx.move(a, S.QUEUED, S.CANCELLED))
    every = store.history()
    assert [t.task_id for t in every] == [a, a, a, b, b, b]
    assert check_history(every) == {a: S.CANCELLED, b: S.RUNNING}


def test_pruning_drops_the_entries_older_than_the_cut_and_counts_them(store, clock) -> None:
    store.PRUNE_BATCH = 2  # several transactions over five tasks
    old = [_new(store) for _ in range(3)]
    clock.t += 10
    young = [_new(store) for _ in range(2)]
    for tid in old[:2]:
        store.write(lambda tx, tid=tid: tx.move(tid, S.QUEUED, S.RUNNING))  # at the new time
    assert store.prune_history(1_000_005_000) == 6  # NEW and QUEUED of each old task
    assert [t.to_status for t in store.history(old[0])] == [S.RUNNING]
    assert store.history(old[2]) == []
    assert all(len(store.history(tid)) == 2 for tid in young)
    assert store.prune_history(1_000_005_000) == 0
    with sqlite3.connect(str(store.db.database)) as con:  # a task with nothing left keeps no empty text
        assert con.execute("SELECT history FROM taskmgr_task WHERE id = ?", (old[2],)).fetchone() == (None,)


def test_without_history_nothing_is_recorded(tmp_path) -> None:
    s = Store(str(tmp_path / "n.db"), history=False)
    try:
        tid = _new(s)
        assert s.write(lambda tx: tx.move(tid, S.QUEUED, S.RUNNING))
        assert s.history(tid) == [] and s.history() == []
        assert s.get(tid).status is S.RUNNING
    finally:
        s.close()


def test_the_history_table_of_an_earlier_version_is_merged_into_the_rows_when_it_opens(tmp_path, clock) -> None:
    """A file made before history moved into the task row (no ``history`` column, no version): when
    it opens, the column is added and the old table's rows become each row's first entries; they
    are then pruned by age and go with their task as today's entries do, and the table is gone."""
    path = str(tmp_path / "old.db")
    Store(path).close()
    con = sqlite3.connect(path)
    with con:
        con.execute("DROP TABLE taskmgr_schema")  # the schema before versions
        con.execute("CREATE TABLE taskmgr_history (id INTEGER NOT NULL PRIMARY KEY, task_id BIGINT NOT NULL, "
                    "from_status TEXT, to_status TEXT NOT NULL, at BIGINT NOT NULL)")
        con.execute("CREATE TABLE t2 AS SELECT * FROM taskmgr_task")
        con.execute("DROP TABLE taskmgr_task")
        con.execute("ALTER TABLE t2 DROP COLUMN history")
        con.execute("ALTER TABLE t2 RENAME TO taskmgr_task")
        for tid in (1, 2):
            con.execute("INSERT INTO taskmgr_task (id, graphspace, graph, type, name, callable, status, created, "
                        "updated) VALUES (?, 'DEFAULT', 'g', 't', 'n', 'm.f', 'queued', 5, 5)", (tid,))
            con.executemany("INSERT INTO taskmgr_history (task_id, from_status, to_status, at) VALUES (?, ?, ?, ?)",
                            [(tid, None, "new", 5), (tid, "new", "queued", 5)])
    con.close()
    s = Store(path, clock=clock)
    try:
        assert "taskmgr_history" not in s.db.get_tables()
        assert s.write(lambda tx: tx.move(1, S.QUEUED, S.RUNNING))
        assert _moves(s, 1) == [(None, S.NEW, 5), (S.NEW, S.QUEUED, 5), (S.QUEUED, S.RUNNING, 1_000_000_000)]
        assert check_history(s.history()) == {1: S.RUNNING, 2: S.QUEUED}
        assert s.prune_history(6) == 4  # the old table's four rows, now in the rows
        assert _moves(s, 1) == [(S.QUEUED, S.RUNNING, 1_000_000_000)]
        assert s.write(lambda tx: tx.delete(2))
        assert s.history(2) == []
    finally:
        s.close()


def test_a_damaged_status_that_is_not_text_is_recorded_as_text(store) -> None:
    """SQLite keeps a BLOB where text belongs; the history records it decoded, and the move is made
    (a manager's start, which sends damaged records to UNKNOWN, once failed on it)."""
    tid = _new(store)
    store.write(lambda tx: tx.execute("UPDATE taskmgr_task SET status = ? WHERE id = ?", (b"\xfe\x01", tid)))
    assert store.write(lambda tx: tx.move_from_stored(tid, b"\xfe\x01", S.UNKNOWN, result="damaged"))
    assert store.history(tid)[-1][1:3] == ("\\xfe\x01", S.UNKNOWN)


def test_an_unreadable_history_entry_is_skipped_and_the_rest_still_read(store, caplog) -> None:
    a, b = _new(store), _new(store)
    store.write(lambda tx: tx.execute("UPDATE taskmgr_task SET history = 'x' || history || '5\n' WHERE id = ?",
                                      (a,)))
    assert [t.task_id for t in store.history()] == [a, b, b]  # a keeps its one readable entry
    assert [t.to_status for t in store.history(a)] == [S.QUEUED]
    assert "not a JSON array" in caplog.text


def test_pruning_drops_old_entries_wherever_they_are_in_the_row(store, clock) -> None:
    """Nodes' clocks differ: an entry may be older than the one before it. Each goes by its own age."""
    tid = _new(store)
    clock.t -= 100  # the next change is dated before the creation
    assert store.write(lambda tx: tx.move(tid, S.QUEUED, S.RUNNING))
    assert store.prune_history(999_950_000) == 1
    assert [t.to_status for t in store.history(tid)] == [S.NEW, S.QUEUED]


def test_rows_read_for_operations_leave_the_history_out(store) -> None:
    tid = _new(store)
    assert "history" not in store.write(lambda tx: tx.row(tid))
    assert "history" not in store.rows_where(store.Task.id == tid)[0]
