"""taskmgr.testing: the inline and step executors, the fake clock, and the strategies."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmgr import TaskContext, TaskManager, TaskStatus, can_move
from taskmgr.store import Store
from taskmgr.testing import FakeClock, StepExecutor, inline_manager, json_values, status_paths, task_type_names

S = TaskStatus


def my_job(ctx: TaskContext) -> int:
    for _ in range(ctx.input["rows"]):
        ctx.progress += 1
    return ctx.progress


def test_the_readme_example_holds() -> None:
    with inline_manager() as mgr:
        mgr.register("job", my_job)
        task = mgr.get(mgr.submit("job", {"rows": 3}))
        assert task.status.name == "SUCCESS" and task.progress == 3


@settings(max_examples=60, deadline=None)
@given(value=json_values())
def test_any_json_value_goes_in_and_comes_back_out(value) -> None:
    with inline_manager() as mgr:
        mgr.register("echo", lambda ctx: ctx.input)
        task = mgr.get(mgr.submit("echo", value))
    assert task.status is S.SUCCESS
    assert json.loads(task.result) == value
    assert task.input_value == value == task.result_value


def test_delays_and_backoff_wait_for_the_fake_clock() -> None:
    clock = FakeClock()
    attempts = []

    def flaky(ctx: TaskContext) -> str:
        attempts.append(ctx.retries)
        if ctx.retries == 0:
            raise RuntimeError("first time")
        return "ok"

    with inline_manager(clock=clock) as mgr:
        mgr.register("flaky", flaky, max_retries=1, retry_delay=10)
        later = mgr.submit("flaky", delay=5)
        assert mgr.get(later).status is S.PENDING and attempts == []
        clock.advance(4.9)
        mgr.run_due()
        assert attempts == []
        clock.advance(0.1)
        mgr.run_due()
        assert attempts == [0] and mgr.get(later).status is S.PENDING  # waiting for its retry
        clock.advance(9.99)
        mgr.run_due()
        assert attempts == [0]
        clock.advance(0.01)
        mgr.run_due()
        task = mgr.get(later)
    assert attempts == [0, 1]
    assert task.status is S.SUCCESS and task.retries == 1


def test_a_fake_clock_never_goes_back() -> None:
    with pytest.raises(ValueError, match="only moves forward"):
        FakeClock().advance(-1)


def test_the_step_executor_holds_tasks_until_told(db_path: str) -> None:
    ex = StepExecutor()
    started = threading.Event()
    go = threading.Event()

    def job(ctx: TaskContext) -> str:
        started.set()
        assert go.wait(10)
        return "done"

    mgr = TaskManager(db_path, executor=ex)
    mgr.register("job", job)
    with mgr:
        tid = mgr.submit("job")
        assert mgr.get(tid).status is S.QUEUED and ex.pending == 1
        thread = ex.run_next()
        assert started.wait(10)
        assert mgr.get(tid).status is S.RUNNING
        go.set()
        assert mgr.wait(tid, 10).status is S.SUCCESS
        thread.join(10)
        with pytest.raises(LookupError):
            ex.run_next()


@settings(max_examples=100, deadline=None)
@given(path=status_paths())
def test_status_paths_are_walks_of_the_table(path) -> None:
    assert path[0] is S.NEW
    assert all(can_move(a, b) for a, b in zip(path, path[1:]))


@settings(max_examples=30, deadline=None)
@given(path=status_paths(), name=task_type_names())
def test_a_store_follows_any_walk_of_the_table_and_records_it(tmp_path_factory, path, name) -> None:
    store = Store(str(tmp_path_factory.mktemp("walk") / "t.db"), synchronous="OFF")
    try:
        tid = store.write(
            lambda tx: tx.insert({"graphspace": "G", "graph": "g", "type": name, "name": name, "callable": "m.f"})
        )
        for a, b in zip(path, path[1:]):
            assert store.write(lambda tx, a=a, b=b: tx.move(tid, a, b))
        assert [t.to_status for t in store.history(tid)] == path
        assert store.get(tid).status is path[-1]
    finally:
        store.close()


@settings(deadline=None)  # each example opens a manager on a new file: one took 416 ms in a full run
@given(name=task_type_names())
def test_generated_type_names_register(name) -> None:
    with inline_manager() as mgr:
        mgr.register(name, lambda ctx: 1)
        assert name in mgr.task_types


def test_strategies_draw_statuses_by_kind() -> None:
    from taskmgr.testing import statuses

    @given(st.data())
    def check(data) -> None:
        assert data.draw(statuses(terminal=True)).terminal
        assert not data.draw(statuses(terminal=False)).terminal

    check()


@pytest.mark.parametrize(
    ("moves", "error"),
    [
        ([(1, None, S.NEW), (1, S.NEW, S.RUNNING)], "the table does not allow"),
        ([(1, None, S.NEW), (1, S.QUEUED, S.RUNNING)], "does not start from its last status"),
        ([(1, S.NEW, S.QUEUED)], "does not start from its last status"),
        ([(1, None, S.QUEUED)], "a creation must come first and be NEW"),
        ([(1, None, S.NEW), (1, None, S.NEW)], "a creation must come first"),
        ([(1, None, S.NEW), (1, S.NEW, "bogus")], "the table does not allow"),
    ],
)
def test_check_history_names_the_first_bad_move(moves, error: str) -> None:
    from taskmgr import Transition
    from taskmgr.testing import check_history

    with pytest.raises(AssertionError, match=error):
        check_history([Transition(t, f, to, 0) for t, f, to in moves])


def test_check_history_returns_each_tasks_last_status() -> None:
    from taskmgr import Transition
    from taskmgr.testing import check_history

    moves = [(1, None, S.NEW), (2, None, S.NEW), (1, S.NEW, S.QUEUED), (2, S.NEW, S.CANCELLED)]
    assert check_history([Transition(t, f, to, 0) for t, f, to in moves]) == {1: S.QUEUED, 2: S.CANCELLED}
