"""A task that finds no worker free at its submit: the commits after it try to start it.

Each try is an operation in the transaction of a later commit that reserves a
worker if one is free and moves the task QUEUED -> RUNNING (see
:mod:`taskmgr._dispatch`). These tests hold the only worker with a ``gate``
task so that the tries meet a busy pool for as long as they need.

Seen through public seams: a try asks the executor for a worker ahead of the
line (``reserve(1, ahead_of_queue=True)``), a try that holds one moves the task
with :func:`taskmgr._moves.start_queued`, and a worker's own start is
:func:`taskmgr._moves.start`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import peewee
import pytest

from conftest import WAIT, Gates, register_test_types
from taskmgr import TaskManager, TaskStatus
from taskmgr import _moves as moves
from taskmgr.testing import rooms

S = TaskStatus


def _spy(monkeypatch, name: str, calls: list[int], fault=None):
    """Record each call of ``taskmgr._moves.<name>`` by task id; ``fault(task_id, result)`` may raise."""
    real = getattr(moves, name)

    def spied(tx, *args):
        task_id = args[-1]
        calls.append(task_id)
        result = real(tx, *args)
        if fault is not None:
            fault(task_id, result)
        return result

    monkeypatch.setattr(moves, name, spied)


def _count_tries(monkeypatch, mgr: TaskManager) -> list[int]:
    """A list that grows by one at each try that asks the executor for a worker (a try that holds
    one already, after its batch was rolled back, asks no more)."""
    executor = rooms(mgr).executor
    real = executor.reserve
    asked: list[int] = []

    def reserve(n: int, *, ahead_of_queue: bool = False) -> int:
        got = real(n, ahead_of_queue=ahead_of_queue)
        if ahead_of_queue:  # a try's: the task was in line before every call now waiting
            asked.append(got)
        return got

    monkeypatch.setattr(executor, "reserve", reserve)
    return asked


def _until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT} s"
        time.sleep(0.005)


def _busy_manager(db_path: str, gates: Gates, tries: int, workers: int = 1) -> tuple[TaskManager, int]:
    """A started manager whose workers are all held by gate tasks (the last one returned)."""
    mgr = TaskManager(db_path, workers=workers, poll_interval=0.05)
    mgr.START_TRIES = tries
    register_test_types(mgr, gates)
    mgr.start()
    for _ in range(workers):
        blocker = mgr.submit("gate")
        gates.wait_started(blocker)
    return mgr, blocker


def _trying(mgr: TaskManager) -> int:
    return rooms(mgr).dispatcher.trying


def _idle(mgr: TaskManager) -> bool:
    """No callable runs on the manager's executor (its ``join`` says so at once)."""
    return rooms(mgr).executor.join(0)


def _no_worker_held(mgr: TaskManager) -> None:
    executor = rooms(mgr).executor
    assert _trying(mgr) == 0
    assert executor.reserved == 0 and executor.busy == 0 and executor.queued == 0


def test_a_task_that_found_the_workers_busy_is_started_by_a_later_commit(db_path: str, gates: Gates,
                                                                         monkeypatch) -> None:
    by_worker: list[int] = []
    _spy(monkeypatch, "start", by_worker)
    mgr, blocker = _busy_manager(db_path, gates, tries=100_000)  # tries until the worker is free
    try:
        tid = mgr.submit("echo", "later")
        assert mgr.get(tid).status is S.QUEUED
        gates.release.set()
        assert mgr.wait(tid, WAIT).result == '"later"'
        assert by_worker == []  # no worker wrote its start: a commit did
        assert [m.to_status for m in mgr.history(tid)] == [S.NEW, S.QUEUED, S.RUNNING, S.SUCCESS]
        assert mgr.wait(blocker, WAIT).status is S.SUCCESS
        _no_worker_held(mgr)
    finally:
        gates.release.set()
        mgr.shutdown()


def test_after_its_tries_a_task_waits_in_the_executors_queue_for_a_worker_to_start_it(
    db_path: str, gates: Gates, monkeypatch
) -> None:
    by_worker: list[int] = []
    _spy(monkeypatch, "start", by_worker)
    mgr, _blocker = _busy_manager(db_path, gates, tries=3)
    tries = _count_tries(monkeypatch, mgr)
    try:
        tid = mgr.submit("echo", "queued")
        _until(lambda: _trying(mgr) == 0, "the end of the tries")
        assert tries == [0, 0, 0]  # three tries (the only task tried), each finding no worker free
        assert mgr.get(tid).status is S.QUEUED and rooms(mgr).executor.queued == 1
        gates.release.set()
        assert mgr.wait(tid, WAIT).result == '"queued"'
        assert by_worker == [tid]
        _until(lambda: _idle(mgr), "the gate's end")
        _no_worker_held(mgr)
    finally:
        gates.release.set()
        mgr.shutdown()


def test_without_tries_a_worker_starts_the_task(db_path: str, gates: Gates, monkeypatch) -> None:
    moved: list[int] = []
    _spy(monkeypatch, "start_queued", moved)
    mgr, _blocker = _busy_manager(db_path, gates, tries=0)
    tries = _count_tries(monkeypatch, mgr)
    try:
        tid = mgr.submit("echo", 1)
        assert _trying(mgr) == 0 and rooms(mgr).executor.queued == 1
        gates.release.set()
        assert mgr.wait(tid, WAIT).status is S.SUCCESS
        assert tries == [] and moved == []
    finally:
        gates.release.set()
        mgr.shutdown()


@pytest.mark.parametrize("control", ["cancel", "suspend", "delete"])
def test_a_task_cancelled_suspended_or_deleted_while_its_start_is_tried_never_starts(
    db_path: str, gates: Gates, control: str
) -> None:
    mgr, blocker = _busy_manager(db_path, gates, tries=100_000)
    try:
        tid = mgr.submit("echo", "never")
        if control == "cancel":
            assert mgr.cancel(tid)
        elif control == "suspend":
            mgr.suspend(tid)
        else:
            mgr.delete(tid, force=True)
        gates.release.set()
        assert mgr.wait(blocker, WAIT).status is S.SUCCESS
        _until(lambda: _trying(mgr) == 0, "the end of the tries")
        _until(lambda: _idle(mgr), "the gate's end")
        assert tid not in gates.ran
        if control == "delete":
            assert mgr.list(limit=-1)[0].id == blocker and len(mgr.list(limit=-1)) == 1
        else:
            statuses = [m.to_status for m in mgr.history(tid)]
            assert S.RUNNING not in statuses
            assert mgr.get(tid).status is (S.CANCELLED if control == "cancel" else S.PENDING)
        _no_worker_held(mgr)
    finally:
        gates.release.set()
        mgr.shutdown()


def test_a_batch_run_again_does_not_reserve_a_second_worker(db_path: str, gates: Gates, monkeypatch) -> None:
    """The try that reserves the freed worker and moves the task is followed, in the same batch,
    by a lock error: the batch is rolled back and run again, and the second run must reuse the
    reservation (two workers, both free by then: a second reservation would be taken, and
    leak)."""
    tries: list[int] = []
    failed: list[int] = []

    def locked_once(task_id: int, moved: object) -> None:
        if moved and not failed:
            failed.append(task_id)
            raise peewee.OperationalError("database is locked")

    _spy(monkeypatch, "start_queued", tries, locked_once)  # the move of a try that holds a worker
    mgr, blocker = _busy_manager(db_path, gates, tries=100_000, workers=2)
    try:
        tid = mgr.submit("echo", "again")
        gates.release.set()
        assert mgr.wait(tid, WAIT).status is S.SUCCESS
        assert failed == [tid] and tries.count(tid) >= 2
        assert mgr.wait(blocker, WAIT).status is S.SUCCESS
        _until(lambda: _idle(mgr), "the gate's end")
        _no_worker_held(mgr)
        direct = mgr.submit("echo", "direct")  # the worker is free: a submit reserves it again
        assert mgr.wait(direct, WAIT).status is S.SUCCESS
        assert [m.to_status for m in mgr.history(direct)][:3] == [S.NEW, S.QUEUED, S.RUNNING]
    finally:
        gates.release.set()
        mgr.shutdown()


def test_a_try_whose_commit_fails_gives_its_worker_back_and_a_worker_starts_the_task(
    db_path: str, gates: Gates, monkeypatch
) -> None:
    by_worker: list[int] = []
    failed: list[int] = []

    def full(task_id: int, moved: object) -> None:  # every time: the store splits a failed batch and retries
        if moved:
            failed.append(task_id)
            raise peewee.OperationalError("database or disk is full")

    _spy(monkeypatch, "start_queued", [], full)  # the move of a try that holds a worker
    _spy(monkeypatch, "start", by_worker)
    mgr, blocker = _busy_manager(db_path, gates, tries=100_000)
    try:
        tid = mgr.submit("echo", "by a worker")
        gates.release.set()
        assert mgr.wait(tid, WAIT).result == '"by a worker"'
        assert set(failed) == {tid} and by_worker == [tid]
        assert [m.to_status for m in mgr.history(tid)] == [S.NEW, S.QUEUED, S.RUNNING, S.SUCCESS]
        assert mgr.wait(blocker, WAIT).status is S.SUCCESS
        _until(lambda: _idle(mgr), "the gate's end")
        _no_worker_held(mgr)
    finally:
        gates.release.set()
        mgr.shutdown()


def test_a_shutdown_hands_back_a_task_whose_start_was_still_tried(db_path: str, gates: Gates) -> None:
    mgr, blocker = _busy_manager(db_path, gates, tries=100_000)
    tid = mgr.submit("echo", "next time")
    mgr.shutdown(wait=False)  # the gate still runs: abandoned, as by a crash
    assert _trying(mgr) == 0
    gates.release.set()
    again = TaskManager(db_path, workers=1)
    register_test_types(again, gates)
    try:
        task = again.get(tid)
        assert task.status is S.RESTORING
        again.start()
        assert again.wait(tid, WAIT).result == '"next time"'
        assert again.wait(blocker, WAIT).status is S.SUCCESS
        assert S.RUNNING not in [m.to_status for m in again.history(tid)][:-2]
    finally:
        again.shutdown()


@contextlib.contextmanager
def _busy_recording(db_path: str, gates: Gates, tries: int, workers: int) -> Iterator[tuple[TaskManager, list]]:
    """:func:`_busy_manager` with a ``rec`` type that records its inputs in the order the tasks
    start; releases the gates and shuts the manager down at the end."""
    mgr, _blocker = _busy_manager(db_path, gates, tries=tries, workers=workers)
    started: list = []
    mgr.register("rec", lambda ctx: started.append(ctx.input))
    try:
        yield mgr, started
    finally:
        gates.release.set()
        mgr.shutdown()


def test_a_batch_submitted_to_a_busy_pool_starts_in_id_order(db_path: str, gates: Gates) -> None:
    # six tasks, two workers: the batch does not fit the tries (a pool's worth), so none is tried
    # and none is put behind the others (they ran 2, 3, 4, 5, 0, 1 when the first two were tried)
    with _busy_recording(db_path, gates, tries=4, workers=2) as (mgr, started):
        ids = mgr.submit_many("rec", list(range(6)))
        gates.release.set()
        for tid in ids:
            mgr.wait(tid, WAIT)
        assert started == list(range(6))


def test_a_task_whose_tries_ended_goes_ahead_of_those_submitted_meanwhile(db_path: str, gates: Gates) -> None:
    with _busy_recording(db_path, gates, tries=4, workers=2) as (mgr, started):
        first = mgr.submit_many("rec", [0, 1])  # fits the tries: both are tried by the next commits
        rest = [mgr.submit("rec", i) for i in range(2, 6)]  # the tries are full: these wait in line
        _until(lambda: _trying(mgr) == 0, "the end of the tries")
        assert rooms(mgr).executor.waiting == 6  # the tried two went back in line, in their place
        gates.release.set()
        for tid in first + rest:
            mgr.wait(tid, WAIT)
        assert started == list(range(6))
        _no_worker_held(mgr)


def test_a_task_being_tried_gives_way_to_none_that_came_after_it(db_path: str, gates: Gates) -> None:
    # tried without end while nothing waits; once a task waits in line after it, its next try
    # that finds no worker puts it back in line, ahead: a freed worker takes it first
    with _busy_recording(db_path, gates, tries=100_000, workers=1) as (mgr, started):
        tried = mgr.submit("rec", "tried")
        assert _trying(mgr) == 1 and mgr.get(tried).status is S.QUEUED  # the one task tried is `tried`
        waiting = mgr.submit("rec", "in line")  # the tries are full (one worker's worth): in line
        _until(lambda: _trying(mgr) == 0, "the end of the tries")
        assert rooms(mgr).executor.waiting == 2
        gates.release.set()
        mgr.wait(waiting, WAIT)
        assert started == ["tried", "in line"]
        _no_worker_held(mgr)


def test_the_executor_puts_a_call_back_where_it_was_in_line() -> None:
    from taskmgr.executor import PoolExecutor

    ex = PoolExecutor(2)  # not started: nothing takes the calls, the line is read as it is
    calls = {name: (lambda: None) for name in "abcwxyz"}

    def line() -> list[str]:
        names = {id(fn): name for name, fn in calls.items()}
        return [names[id(fn)] for fn in ex.line]

    ex.submit(calls["a"])
    mark_1 = ex.mark()
    ex.submit(calls["b"])
    mark_2 = ex.mark()
    ex.submit(calls["c"])
    ex.submit_from(calls["y"], mark_2)  # put back in a newer place first
    ex.submit_from(calls["x"], mark_1)
    ex.submit_from(calls["z"], ex.mark())
    assert line() == ["a", "x", "b", "y", "c", "z"]
    assert ex.line[0] is calls["a"] and ex.line[1] is calls["x"]  # what the drains take first
    ex.submit_from(calls["w"], mark_1)  # ahead of all that came after its place, b included
    assert line() == ["a", "x", "w", "b", "y", "c", "z"]  # behind those of its place, as put back in turn
    assert ex.waiting == 7
    ex.shutdown(wait=False)
