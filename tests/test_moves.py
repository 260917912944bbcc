"""Every status decision (taskmgr._moves), inside a real store transaction, without threads.

The store runs each operation at once on the calling thread (``group_commit=False``), so each
test reads: set a row up, make one decision, look at the row. The spaces that are small are
walked whole: every status a take-over or a claim can meet, for a node that runs the task's type,
a node that does not, and an idle manager.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from taskmgr import CannotCancel, IncompleteTask, InvalidTransition, TaskStatus, UnknownTaskType, can_move
from taskmgr import _moves as moves
from taskmgr.store import Store
from taskmgr.testing import check_history

S = TaskStatus
ME, OTHER, DEAD = "me", "other", "dead"


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    s = Store(str(tmp_path / "moves.db"), group_commit=False, synchronous="OFF")
    yield s
    s.close()


def _row(**fields: Any) -> dict[str, Any]:
    row = {"graphspace": "DEFAULT", "graph": "g", "type": "t", "name": "n", "callable": "m.f", "input": "1",
           "owner": None, "max_retries": 0, "retry_delay": 1.0, "run_at": None, "ran": 0}
    row.update(fields)
    return row


def _path_to(status: TaskStatus) -> tuple[TaskStatus, ...]:
    """A path the table allows from NEW to ``status`` (breadth first)."""
    paths = [(S.NEW,)]
    while paths:
        path = paths.pop(0)
        if path[-1] is status:
            return path
        paths += [path + (nxt,) for nxt in S if nxt not in path and can_move(path[-1], nxt)]
    raise AssertionError(status)


def _make(store: Store, status: TaskStatus, **fields: Any) -> int:
    return store.write(lambda tx: tx.insert_many([_row(**fields)], _path_to(status))[0])


def _read(store: Store, tid: int) -> dict[str, Any]:
    row = store.write(lambda tx: tx.row(tid))
    assert row is not None
    return row


def _register(store: Store, *names: str) -> None:
    for name in names:
        store.register_node(name, 0, lease=60)


# ------------------------------------------------------------------ creation, start, outcome
@pytest.mark.parametrize(("owned", "direct", "pending", "expected"), [
    (False, 0, False, [S.NEW, S.NEW]),
    (True, 0, False, [S.QUEUED, S.QUEUED]),
    (True, 1, False, [S.RUNNING, S.QUEUED]),
    (True, 2, False, [S.RUNNING, S.RUNNING]),
    (True, 0, True, [S.PENDING, S.PENDING]),
])
def test_a_submit_writes_each_task_where_it_starts(store, owned, direct, pending, expected) -> None:
    rows = [_row(owner=ME if owned else None, ran=int(i < direct)) for i in range(2)]
    ids, still_owned = store.write(moves.insert, rows, direct, pending, owned, lambda: False)
    assert still_owned is owned
    assert [store.get(t).status for t in ids] == expected
    check_history(store.history())


def test_a_submit_that_meets_a_shutdown_in_its_transaction_writes_its_tasks_unowned(store) -> None:
    rows = [_row(owner=ME, ran=1), _row(owner=ME)]
    ids, owned = store.write(moves.insert, rows, 1, False, True, lambda: True)
    assert owned is False
    assert [(r["status"], r["owner"], r["ran"]) for r in (_read(store, t) for t in ids)] == [
        ("new", None, 0), ("new", None, 0)]


def test_only_the_owner_starts_a_queued_task(store) -> None:
    tid = _make(store, S.QUEUED, owner=ME)
    assert store.write(moves.start, OTHER, tid) is None
    row = store.write(moves.start, ME, tid)
    assert row is not None and row["status"] == "running" and row["ran"] == 1
    assert store.write(moves.start, ME, tid) is None  # once


@pytest.mark.parametrize(("outcome", "found", "expected"), [
    (moves.Outcome(S.SUCCESS, "1", 3), S.RUNNING, S.SUCCESS),
    (moves.Outcome(S.FAILED, "E: x", 3), S.RUNNING, S.FAILED),
    (moves.Outcome(S.CANCELLED, None, 3), S.RUNNING, S.CANCELLED),
    (moves.Outcome(S.CANCELLED, None, 3), S.CANCELLING, S.CANCELLED),
    (moves.Outcome(S.PENDING, "E: x", 3, run_at=99), S.RUNNING, S.PENDING),
    (moves.Outcome(S.PENDING, "E: x", 3, run_at=99), S.CANCELLING, S.FAILED),  # no retry once cancelled
    (moves.Outcome(S.RESTORING, None, 3), S.RUNNING, S.RESTORING),
    (moves.Outcome(S.RESTORING, None, 3), S.CANCELLING, S.CANCELLED),
    (moves.Outcome(S.SUCCESS, "1", 3), S.CANCELLING, S.SUCCESS),  # a callable that never looked
])
def test_an_outcome_lands_only_on_its_own_nodes_run(store, outcome, found, expected) -> None:
    tid = _make(store, found, owner=ME, ran=1)
    assert not store.write(moves.finish, OTHER, tid, outcome)  # a node taken for dead changes nothing
    assert store.get(tid).status is found
    assert store.write(moves.finish, ME, tid, outcome)
    task = store.get(tid)
    assert task.status is expected and task.progress == 3
    check_history(store.history(tid))


# ------------------------------------------------------------------ controls
@pytest.mark.parametrize("status", list(S))
def test_cancel_follows_the_contract_for_every_status(store, status) -> None:
    tid = _make(store, status, owner=ME)
    if status in moves.NOT_STARTED:
        assert store.write(moves.cancel, OTHER, tid, None, None) is False
        assert store.get(tid).status is S.CANCELLED
    elif status is S.RUNNING:
        assert store.write(moves.cancel, ME, tid, None, None) is True  # runs here: its callable is told
        assert store.get(tid).status is S.CANCELLING
    else:
        with pytest.raises(CannotCancel):
            store.write(moves.cancel, ME, tid, None, None)
        assert store.get(tid).status is status


@pytest.mark.parametrize("status", list(S))
def test_suspend_holds_only_what_has_not_started(store, status) -> None:
    tid = _make(store, status)
    if status in moves.SUSPENDABLE or status is S.PENDING:
        store.write(moves.suspend, tid, None, None)
        assert store.get(tid).status is S.PENDING and _read(store, tid)["run_at"] is None
    else:
        with pytest.raises(InvalidTransition, match=f"Can't suspend task '{tid}' in status {status.name}"):
            store.write(moves.suspend, tid, None, None)


@pytest.mark.parametrize(("status", "force"), list(itertools.product(list(S), [False, True])))
def test_delete_takes_an_unfinished_record_only_by_force(store, status, force) -> None:
    tid = _make(store, status)
    if status.terminal or force:
        assert store.write(moves.delete, tid, force, None, None) is status
        assert store.get(tid) is None
    else:
        with pytest.raises(IncompleteTask):
            store.write(moves.delete, tid, force, None, None)


def test_resume_refuses_a_type_a_started_node_cannot_run(store) -> None:
    tid = _make(store, S.PENDING)
    with pytest.raises(UnknownTaskType):
        store.write(moves.resume, moves.Actor(ME, (), True), tid, None, None, {})
    assert store.write(moves.resume, moves.Actor(ME, ("t",), True), tid, None, None, {"t": object()}) is True
    assert _read(store, tid)["status"] == "queued" and _read(store, tid)["owner"] == ME


# ------------------------------------------------------------------ take-over, exhaustively
ACTORS = {
    "a node that runs the type": moves.Actor(ME, ("t",), True, max_restores=3),
    "a node that does not": moves.Actor(ME, ("other",), True, max_restores=3),
}
#: what a take-over leaves: (status, owned here?) for a node that runs the type, and for one that does not
TAKE_OVER = {
    S.NEW: ((S.QUEUED, True), (S.NEW, False)),
    S.SCHEDULING: ((S.QUEUED, True), (S.NEW, False)),
    S.SCHEDULED: ((S.QUEUED, True), (S.NEW, False)),
    S.QUEUED: ((S.QUEUED, True), (S.RESTORING, False)),
    S.RESTORING: ((S.QUEUED, True), (S.RESTORING, False)),
    S.RUNNING: ((S.QUEUED, True), (S.RESTORING, False)),
    S.PENDING: ((S.PENDING, True), (S.PENDING, False)),
    S.CANCELLING: ((S.CANCELLED, False), (S.CANCELLED, False)),
}


@pytest.mark.parametrize(("status", "who"), list(itertools.product(list(TAKE_OVER), list(ACTORS))))
def test_a_take_over_of_a_dead_nodes_task_for_every_status_and_kind_of_node(store, status, who) -> None:
    actor = ACTORS[who]
    _register(store, ME)
    tid = _make(store, status, owner=DEAD, ran=int(status is S.RUNNING))
    queued = store.write(moves.take_over, actor, [tid])
    expected, here = TAKE_OVER[status][list(ACTORS).index(who)]
    row = _read(store, tid)
    assert S(row["status"]) is expected, row
    if not expected.terminal:  # whose it is matters while it can still run
        assert row["owner"] == (ME if here else None), row
    assert queued == ([tid] if expected is S.QUEUED else [])
    if status is S.RUNNING:  # a run cut short counts as a retry and a restore, wherever it runs next
        assert (row["retries"], row["restores"]) == (1, 1)
    check_history(store.history(tid))


@pytest.mark.parametrize("status", list(TAKE_OVER))
def test_a_take_over_leaves_a_registered_nodes_tasks_alone(store, status) -> None:
    _register(store, ME, OTHER)
    tid = _make(store, status, owner=OTHER)
    before = _read(store, tid)
    assert store.write(moves.take_over, ACTORS["a node that runs the type"], [tid]) == []
    assert _read(store, tid) == before


def test_a_task_interrupted_max_restores_times_ends_failed(store) -> None:
    tid = _make(store, S.RUNNING, owner=DEAD, ran=1)
    store.write(lambda tx: tx.update(tid, (S.RUNNING,), restores=3))
    assert store.write(moves.take_over, ACTORS["a node that runs the type"], [tid]) == []
    task = store.get(tid)
    assert task.status is S.FAILED and task.result.startswith("RestoreLimit: ")


def test_an_undecodable_input_goes_unknown_only_on_a_node_that_would_run_it(store) -> None:
    tid = _make(store, S.QUEUED, owner=DEAD, input="{not json")
    store.write(moves.take_over, ACTORS["a node that does not"], [tid])
    assert store.get(tid).status is S.RESTORING  # left for a node of its type, as it is
    store.write(moves.claim, ACTORS["a node that runs the type"], [_read(store, tid)])
    task = store.get(tid)
    assert task.status is S.UNKNOWN and task.result.startswith("InvalidInput: ")


@pytest.mark.parametrize("status", [S.NEW, S.RESTORING])
def test_a_claim_queues_unowned_work_of_its_types_and_nothing_else(store, status) -> None:
    mine = _make(store, status)
    theirs = _make(store, status, type="other")
    owned = _make(store, status, owner=OTHER)
    rows = [_read(store, t) for t in (mine, theirs, owned)]
    assert store.write(moves.claim, ACTORS["a node that runs the type"], rows) == [mine]
    assert [S(_read(store, t)["status"]) for t in (mine, theirs, owned)] == [S.QUEUED, status, status]


def test_a_wake_up_requeues_only_due_pending_tasks(store) -> None:
    due = _make(store, S.PENDING, owner=ME, run_at=100)
    later = _make(store, S.PENDING, owner=ME, run_at=10_000)
    held = _make(store, S.PENDING, owner=ME)  # suspended: no run_at
    woken, held_elsewhere = store.write(moves.wake, ACTORS["a node that runs the type"], [due, later, held], 500)
    assert (woken, held_elsewhere) == ([due], False)
    assert [S(_read(store, t)["status"]) for t in (due, later, held)] == [S.QUEUED, S.PENDING, S.PENDING]


def test_a_release_hands_back_what_the_node_is_not_running(store) -> None:
    queued = _make(store, S.QUEUED, owner=ME)
    never_started = _make(store, S.RUNNING, owner=ME, ran=1)
    running = _make(store, S.RUNNING, owner=ME, ran=1)
    waiting = _make(store, S.PENDING, owner=ME, run_at=5)
    assert store.write(moves.release, ME, {running}) == 2
    rows = {t: _read(store, t) for t in (queued, never_started, running, waiting)}
    assert [(S(r["status"]), r["owner"]) for r in rows.values()] == [
        (S.RESTORING, None), (S.RESTORING, None), (S.RUNNING, ME), (S.PENDING, None)]
    assert rows[never_started]["ran"] == 0  # it never ran: its next run is no retry
