"""A damaged file: a row holding a BLOB or a value of the wrong type reads as an UNKNOWN task that
says what is wrong, with every field of the contract's type, and never breaks a read."""

from __future__ import annotations

import json

import pytest

from taskmgr import TaskManager, TaskStatus
from taskmgr.store import Store

S = TaskStatus
ROW = {"graphspace": "DEFAULT", "graph": "g", "type": "t", "name": "n", "callable": "m.f", "input": '{"a":1}'}
INT_FIELDS = ("id", "progress", "created", "updated", "retries")
STR_FIELDS = ("type", "name", "callable", "graph", "graphspace")
OPTIONAL_STR = ("result", "input")


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "d.db"))
    yield s
    s.close()


def _damage(store: Store, tid: int, column: str, value: object) -> None:
    store.write(lambda tx: tx.execute(f'UPDATE taskmgr_task SET "{column}" = ? WHERE id = ?', (value, tid)))


def _well_typed(task) -> None:
    for name in INT_FIELDS:
        assert type(getattr(task, name)) is int, (name, getattr(task, name))
    for name in STR_FIELDS:
        assert type(getattr(task, name)) is str, (name, getattr(task, name))
    for name in OPTIONAL_STR:
        assert getattr(task, name) is None or type(getattr(task, name)) is str, name
    assert isinstance(task.status, S)
    json.dumps(task.to_dict())  # the REST API's object: every value serialisable


DAMAGES = [
    ("progress", "abc", "DamagedRecord: progress holds text 'abc', not an integer"),
    ("progress", 1.5, "DamagedRecord: progress holds the real number 1.5, not an integer"),
    ("created", b"\x00\x01", "DamagedRecord: created holds a BLOB of 2 bytes, not an integer"),
    ("retries", "many", "DamagedRecord: retries holds text 'many', not an integer"),
    ("name", b"\xff\xfe", "DamagedRecord: name holds a BLOB of 2 bytes, not text"),
    ("graph", b"g", "DamagedRecord: graph holds a BLOB of 1 bytes, not text"),
    ("input", b"{}", "DamagedRecord: input holds a BLOB of 2 bytes, not text"),
    ("result", b"ok", "DamagedRecord: result holds a BLOB of 2 bytes, not text"),
    ("status", b"\xfe\x01", "DamagedRecord: stored status b'\\xfe\\x01' is not valid"),
    ("status", 7, "DamagedRecord: stored status '7' is not valid"),  # a text column makes it text
    ("status", "exploded", "DamagedRecord: stored status 'exploded' is not valid"),
]


@pytest.mark.parametrize(("column", "value", "why"), DAMAGES)
def test_a_damaged_row_reads_as_an_unknown_task_that_says_what_is_wrong(store: Store, column, value, why) -> None:
    tid = store.write(lambda tx: tx.insert(dict(ROW), (S.NEW, S.QUEUED)))
    good = store.get(tid)
    _damage(store, tid, column, value)
    task = store.get(tid)
    assert task is not None
    _well_typed(task)
    assert (task.status, task.result) == (S.UNKNOWN, why)
    for name in ("id", "type", "callable", "graphspace"):  # what was sound is as stored
        assert getattr(task, name) == getattr(good, name)


def test_every_damaged_column_is_named(store: Store) -> None:
    tid = store.write(lambda tx: tx.insert(dict(ROW)))
    _damage(store, tid, "progress", "abc")
    _damage(store, tid, "callable", b"\x01")
    task = store.get(tid)
    _well_typed(task)
    assert task.result == ("DamagedRecord: progress holds text 'abc', not an integer; "
                           "callable holds a BLOB of 1 bytes, not text")


def test_a_damaged_row_never_breaks_a_list_a_page_the_statuses_or_the_history(tmp_path) -> None:
    path = str(tmp_path / "m.db")
    with TaskManager(path, executor="inline") as m:
        m.register("noop", lambda ctx: "done")
        ids = [m.submit("noop") for _ in range(5)]
    store = Store(path)
    try:
        _damage(store, ids[1], "progress", "abc")
        _damage(store, ids[2], "name", b"\xff")
        _damage(store, ids[3], "history", b"\x00[")  # the history column is not text either
        listed = store.select()
        assert [t.id for t in listed] == ids
        for task in listed:
            _well_typed(task)
        assert [t.status for t in listed] == [S.SUCCESS, S.UNKNOWN, S.UNKNOWN, S.SUCCESS, S.SUCCESS]
        graph = listed[0].graph
        assert [t.id for t in store.select(graphspace="DEFAULT", graph=graph, after=ids[0], limit=2)] == ids[1:3]
        assert store.statuses(ids) == dict.fromkeys(ids, S.SUCCESS)  # the status column alone is sound
        history = store.history()
        assert {h.task_id for h in history} == set(ids) - {ids[3]}  # an unreadable history reads as none
        assert store.history(ids[3]) == []
        assert store.prune_history(10**15) == len(history)  # and pruning leaves it alone
        assert store.write(lambda tx: tx.read("SELECT history FROM taskmgr_task WHERE id = ?", (ids[3],))) == [
            (b"\x00[",)]
    finally:
        store.close()
    with TaskManager(path) as m:  # the manager's reads and pages too
        page = m.list(limit=3, page="")
        assert [t.id for t in page.tasks] == ids[:3]
        assert m.get(ids[1]).to_dict()["task_progress"] == 0
