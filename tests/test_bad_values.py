"""Bad values are refused with InvalidArgument before anything is written, and whatever fails
around a task's callable ends the task with the reason (defects found from the outside)."""

from __future__ import annotations

import math
import sqlite3

import pytest

from conftest import WAIT
from taskmgr import InvalidArgument, StoreError, TaskManager, TaskStatus

S = TaskStatus


@pytest.fixture
def idle(db_path: str):
    m = TaskManager(db_path)
    m.register("echo", lambda ctx: ctx.input)
    yield m
    m.shutdown()


def _count(db_path: str) -> int:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT COUNT(*) FROM taskmgr_task").fetchone()[0]


@pytest.mark.parametrize("delay", [1e15, math.inf, -math.inf, math.nan, 2**63, 2**200, "5",
                                   True, -1])
def test_a_delay_that_no_clock_can_hold_is_refused_before_the_task_is_stored(idle, db_path, delay) -> None:
    with pytest.raises(InvalidArgument, match="delay must be a non-negative number of seconds"):
        idle.submit("echo", 1, delay=delay)
    assert _count(db_path) == 0  # a retrying caller makes no duplicate


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"max_retries": 2**63}, "max_retries must be a non-negative integer"),
    ({"max_retries": 2**31}, "max_retries must be a non-negative integer"),
    ({"retry_delay": math.nan}, "retry_delay must be a non-negative number of seconds"),
    ({"retry_delay": math.inf}, "retry_delay must be a non-negative number of seconds"),
])
def test_retry_settings_that_do_not_fit_their_columns_are_refused(idle, db_path, kwargs, text) -> None:
    with pytest.raises(InvalidArgument, match=text):
        idle.submit("echo", 1, **kwargs)
    with pytest.raises(InvalidArgument, match=text):
        idle.register("other", lambda ctx: None, **kwargs)
    assert _count(db_path) == 0


@pytest.mark.parametrize("call", [
    lambda m: m.prune_history(math.inf),
    lambda m: m.prune_history(math.nan),
    lambda m: m.prune_history(2**70),
    lambda m: m.list(limit=2**63),
    lambda m: m.list(limit=2**63, page=""),
    lambda m: m.list(limit=0, page=""),
])
def test_reads_and_pruning_refuse_numbers_past_their_columns(idle, call) -> None:
    with pytest.raises(InvalidArgument):
        call(idle)


def test_the_largest_limit_lists_everything(idle) -> None:
    ids = idle.submit_many("echo", [1, 2, 3])
    assert [t.id for t in idle.list(limit=2**63 - 1)] == ids
    page = idle.list(limit=2**63 - 1, page="")
    assert [t.id for t in page.tasks] == ids and page.next_page is None


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"poll_interval": math.nan}, "poll_interval must be a positive number of seconds"),
    ({"poll_interval": math.inf}, "poll_interval must be a positive number of seconds"),
    ({"node_timeout": math.inf}, "node_timeout must be a positive number of seconds"),
    ({"node_timeout": math.nan}, "node_timeout must be a positive number of seconds"),
    ({"node_timeout": 0}, "node_timeout must be a positive number of seconds"),
    ({"busy_timeout": "5"}, "busy_timeout must be a positive number of seconds"),
    ({"busy_timeout": math.inf}, "busy_timeout must be a positive number of seconds"),
    ({"busy_timeout": True}, "busy_timeout must be a positive number of seconds"),
    ({"max_restores": 2**40}, "max_restores must be a non-negative integer"),
])
def test_manager_settings_that_would_break_start_are_refused_at_once(db_path, kwargs, text) -> None:
    with pytest.raises(InvalidArgument, match=text):
        TaskManager(db_path, **kwargs)


def test_a_start_that_fails_leaves_the_manager_idle_and_a_later_start_works(db_path: str) -> None:
    TaskManager(db_path).shutdown()  # the schema exists
    m = TaskManager(db_path, busy_timeout=0.05, poll_interval=0.05)
    m.register("echo", lambda ctx: ctx.input)
    lock = sqlite3.connect(db_path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the node cannot register
    try:
        with pytest.raises(StoreError):
            m.start()
        assert m.state == "idle" and not m.running
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    with m:
        assert m.running
        assert m.wait(m.submit("echo", 5), WAIT).result == "5"


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("executor", ["pool", "inline"])
def test_an_input_too_deep_to_decode_on_a_worker_fails_the_task_with_the_reason(db_path, executor) -> None:
    """Accepted by submit, the input fails to decode on the worker's deeper stack, before the
    callable's own try: the task must end FAILED, never stay RUNNING (or CANCELLING)."""
    import sys

    m = TaskManager(db_path, executor=executor, poll_interval=0.05)
    m.register("echo", lambda ctx: "ran")
    with m:
        # the deepest input that encodes on this (shallow) stack: it cannot decode on a deeper one
        depth = sys.getrecursionlimit()
        while True:
            try:
                tid = m.submit("echo", _nested(depth))
                break
            except InvalidArgument:
                depth -= 5
        task = m.wait(tid, WAIT)
        if task.status is S.SUCCESS:  # the worker's stack was shallow enough: nothing to show here
            pytest.skip("this executor's worker decodes the input at this depth")
        assert task.status is S.FAILED, task
        assert task.result.startswith("InvalidInput: "), task.result
        assert "nested too deeply" in task.result
