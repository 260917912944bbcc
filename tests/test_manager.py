"""TaskManager on a real thread pool: submit, read, cancel, delete, suspend, resume, retries, limits."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import taskmgr._codec as codec
from conftest import WAIT, Gates
from taskmgr import (
    CannotCancel,
    IncompleteTask,
    InvalidArgument,
    InvalidStatus,
    InvalidTransition,
    LimitExceeded,
    ManagerStateError,
    TaskContext,
    TaskManager,
    TaskManagerError,
    TaskNotFound,
    TaskPage,
    TaskStatus,
    UnknownTaskType,
    WaitTimeout,
)
from taskmgr.testing import check_history

S = TaskStatus
KEYS = [
    "task_name",
    "task_progress",
    "task_create",
    "task_status",
    "task_update",
    "task_result",
    "task_retries",
    "id",
    "task_type",
    "task_callable",
    "task_input",
]


def _history_obeys_the_table(mgr: TaskManager, task_id: int) -> list[TaskStatus]:
    moves = mgr.history(task_id)
    check_history(moves)
    return [m.to_status for m in moves]


# ------------------------------------------------------------------ the record
def test_a_task_runs_to_success_and_reads_back_as_the_contracts_object(mgr: TaskManager) -> None:
    tid = mgr.submit("echo", {"gremlin": "g.V()", "k": [1, 2]}, name="g.V()", graph="hugegraph")
    task = mgr.wait(tid, WAIT)
    d = task.to_dict()
    assert list(d) == KEYS
    assert d["task_status"] == "success"
    assert d["task_result"] == '{"gremlin":"g.V()","k":[1,2]}'
    assert json.loads(d["task_input"]) == {"gremlin": "g.V()", "k": [1, 2]}
    assert d["task_name"] == "g.V()" and d["task_type"] == "echo" and d["id"] == tid
    assert d["task_callable"] == "conftest.register_test_types.<locals>.echo"
    assert d["task_retries"] == 0 and d["task_progress"] == 0
    assert d["task_create"] <= d["task_update"]
    assert _history_obeys_the_table(mgr, tid) == [S.NEW, S.QUEUED, S.RUNNING, S.SUCCESS]


def test_result_and_input_keys_are_absent_while_null(mgr: TaskManager, gates: Gates) -> None:
    tid = mgr.submit("sleepy")
    gates.wait_started(tid)
    d = mgr.get(tid).to_dict()
    assert "task_result" not in d and "task_input" not in d
    mgr.cancel(tid)
    mgr.wait(tid, WAIT)


def test_ids_ascend_and_are_never_reused_after_deletion(mgr: TaskManager) -> None:
    a = mgr.submit("echo", 1)
    b = mgr.submit("echo", 2)
    assert b > a
    mgr.wait(b, WAIT)
    mgr.delete(b)
    assert mgr.submit("echo", 3) > b


def test_a_failing_callable_ends_failed_with_its_error_text(mgr: TaskManager) -> None:
    task = mgr.wait(mgr.submit("fail"), WAIT)
    assert task.status is S.FAILED
    assert task.result == "ValueError: bad input"


def test_the_database_file_is_owner_only(mgr: TaskManager, db_path: str) -> None:
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600


# ----------------------------------------------------------------- bad inputs
def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _looped() -> list:
    value: list = []
    value.append(value)
    return value


def _snapshot(mgr: TaskManager) -> list[dict]:
    return [t.to_dict() for t in mgr.list(limit=-1)]


@pytest.mark.parametrize(
    ("call", "error", "text"),
    [
        (lambda m: m.submit("nope"), UnknownTaskType, "Task type 'nope' is not registered"),
        (lambda m: m.submit("echo", {1, 2}), InvalidArgument, "task input is not JSON-serialisable"),
        (lambda m: m.submit("echo", float("nan")), InvalidArgument, "not JSON-serialisable"),
        (lambda m: m.submit("echo", _nested(100_000)), InvalidArgument, "task input is nested too deeply"),
        (lambda m: m.submit("echo", _looped()), InvalidArgument, "task input is nested too deeply, or contains itself"),
        (lambda m: m.submit("echo", {(1, 2): 3}), InvalidArgument, "keys must be str, int, float, bool or None"),
        (lambda m: m.submit("echo", ["ok", "\ud800"]), InvalidArgument,
         "task input holds a lone surrogate ('\\ud800'), which UTF-8 text cannot store: remove it, or send"),
        (lambda m: m.submit("echo", name=""), InvalidArgument, "task name must be a non-empty string"),
        (lambda m: m.submit("echo", graph=None), InvalidArgument, "graph must be a non-empty string"),
        (lambda m: m.submit("echo", delay=-1), InvalidArgument, "delay must be a non-negative number"),
        (lambda m: m.submit("echo", max_retries=-1), InvalidArgument, "max_retries must be a non-negative"),
        (lambda m: m.list(status="xyz"), InvalidStatus, "Status value must be in [UNKNOWN, NEW,"),
        (lambda m: m.submit("echo", name="x\ud800"), InvalidArgument,
         "task name holds a lone surrogate ('\\ud800'), which UTF-8 text cannot store"),
        (lambda m: m.submit("echo", graph="\udc80"), InvalidArgument, "graph holds a lone surrogate ('\\udc80')"),
        (lambda m: m.list(graphspace="\udc80", graph="g"), InvalidArgument, "graphspace holds a lone surrogate"),
        (lambda m: m.list(graph=7), InvalidArgument, "graph must be a non-empty string, got 7"),
        (lambda m: m.list(limit=-2), InvalidArgument, "limit must be -1 (no limit) or a non-negative integer"),
        (lambda m: m.list(limit="10"), InvalidArgument, "limit must be -1"),
        (lambda m: m.list(ids=[1], status="new"), InvalidArgument, "ids cannot be combined with status or page"),
        (lambda m: m.list(ids=["x"]), InvalidArgument, "task id must be a positive integer, got 'x'"),
        (lambda m: m.list(page="garbage!"), InvalidArgument, "invalid page token 'garbage!'"),
        (lambda m: m.get(0), InvalidArgument, "task id must be a positive integer, got 0"),
        (lambda m: m.get("7"), InvalidArgument, "task id must be a positive integer, got '7'"),
        (lambda m: m.get(True), InvalidArgument, "got True"),
        (lambda m: m.get(999), TaskNotFound, "Can't find task with id '999'"),
        (lambda m: m.get(2**63 - 1), TaskNotFound, "Can't find task with id '9223372036854775807'"),
        (lambda m: m.get(2**63), InvalidArgument,
         "task id must be at most 2**63-1 = 9223372036854775807, got 9223372036854775808"),
        (lambda m: m.list(ids=[1, 2**70]), InvalidArgument, "task id must be at most 2**63-1"),
        (lambda m: m.wait_many([1, 2**63]), InvalidArgument, "task id must be at most 2**63-1"),
        (lambda m: m.cancel(2**64), InvalidArgument, "task id must be at most 2**63-1"),
        (lambda m: m.cancel(999), TaskNotFound, "Can't find task with id '999'"),
        (lambda m: m.delete(999), TaskNotFound, "Can't find task with id '999'"),
        (lambda m: m.suspend(-3), InvalidArgument, "got -3"),
        (lambda m: m.resume(999), TaskNotFound, "Can't find task with id '999'"),
    ],
)
def test_bad_inputs_give_clear_errors_and_change_nothing(mgr: TaskManager, call, error, text) -> None:
    mgr.wait(mgr.submit("echo", "before"), WAIT)
    before = _snapshot(mgr)
    with pytest.raises(error) as info:
        call(mgr)
    assert text in str(info.value)
    assert isinstance(info.value, TaskManagerError)
    assert _snapshot(mgr) == before


def test_not_found_and_invalid_transition_errors_are_builtin_kinds_too(mgr: TaskManager) -> None:
    with pytest.raises(LookupError):
        mgr.get(12345)
    tid = mgr.submit("echo", 1)
    mgr.wait(tid, WAIT)
    with pytest.raises(ValueError):
        mgr.cancel(tid)


def test_a_task_of_another_graph_is_not_found(mgr: TaskManager) -> None:
    tid = mgr.submit("echo", 1, graph="g1", graphspace="gs1")
    mgr.wait(tid, WAIT)
    assert mgr.get(tid, graph="g1", graphspace="gs1").id == tid
    for scope in ({"graph": "g2"}, {"graphspace": "gs2"}):
        with pytest.raises(TaskNotFound):
            mgr.get(tid, **scope)
        with pytest.raises(TaskNotFound):
            mgr.delete(tid, **scope)
    assert mgr.get(tid).id == tid


# --------------------------------------------------------------------- limits
def test_an_input_over_the_limit_is_refused_at_submission(db_path: str) -> None:
    m = TaskManager(db_path, max_input_size=100)
    m.register("echo", lambda ctx: ctx.input)
    with pytest.raises(LimitExceeded, match=r"^Task input size 102 exceeded limit 100 bytes$"):
        m.submit("echo", "x" * 100)
    assert m.list() == []
    m.submit("echo", "x" * 98)  # exactly at the limit is fine
    m.shutdown()


def test_a_result_over_the_limit_turns_the_task_failed(db_path: str) -> None:
    with TaskManager(db_path, max_result_size=10, poll_interval=0.05) as m:
        m.register("big", lambda ctx: "y" * 20)
        task = m.wait(m.submit("big"), WAIT)
    assert task.status is S.FAILED
    assert task.result == "LimitExceeded: Task result size 22 exceeded limit 10 bytes"


def test_a_result_that_is_not_json_turns_the_task_failed(mgr: TaskManager) -> None:
    mgr.register("setty", lambda ctx: {1, 2})
    task = mgr.wait(mgr.submit("setty"), WAIT)
    assert task.status is S.FAILED
    assert task.result.startswith("InvalidArgument: task result is not JSON-serialisable")


class _Unreadable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


class _HostileMapping(dict):
    def items(self):  # the JSON encoder asks a dict subclass for its items
        raise RuntimeError("items() refused")


@pytest.mark.parametrize(
    ("fn", "result"),
    [
        # UTF-8 cannot store a lone surrogate: these left the task RUNNING for good (the outcome's
        # encoding raised in the worker, past the callable's own error handling)
        (lambda ctx: "x\ud800", "InvalidArgument: task result holds a lone surrogate ('\\ud800'), which UTF-8 "
         "text cannot store: remove it, or send such data as base64"),
        (lambda ctx: _raise(ValueError("bad \udc80 byte")), "ValueError: bad \\udc80 byte"),
        (lambda ctx: _raise(_Unreadable()), "_Unreadable: (its message could not be read: RuntimeError)"),
        (lambda ctx: _HostileMapping(a=1), "RuntimeError: items() refused"),
    ],
    ids=["surrogate-result", "surrogate-error", "unreadable-error", "hostile-result"],
)
def test_an_outcome_that_cannot_be_stored_as_it_is_still_ends_the_task(mgr: TaskManager, fn, result) -> None:
    mgr.register("odd", fn)
    task = mgr.wait(mgr.submit("odd"), WAIT)
    assert task.status is S.FAILED
    assert task.result == result


def _raise(exc: BaseException):
    raise exc


def test_multibyte_input_is_measured_in_bytes(db_path: str) -> None:
    m = TaskManager(db_path, max_input_size=10)
    m.register("echo", lambda ctx: ctx.input)
    with pytest.raises(LimitExceeded, match="size 14"):
        m.submit("echo", "\u00e9" * 6)  # 6 two-byte characters plus quotes
    m.shutdown()


# ------------------------------------------------------------------- listing
def test_listing_filters_by_graph_and_status_in_id_order(mgr: TaskManager) -> None:
    ids = {g: [mgr.submit("echo", i, graph=g) for i in range(3)] for g in ("a", "b")}
    fail = mgr.submit("fail", graph="a")
    for tid in [*ids["a"], *ids["b"], fail]:
        mgr.wait(tid, WAIT)
    assert [t.id for t in mgr.list(graph="a")] == [*ids["a"], fail]
    assert [t.id for t in mgr.list(graph="a", status="SUCCESS")] == ids["a"]
    assert [t.id for t in mgr.list(graph="a", status="Failed")] == [fail]
    assert [t.id for t in mgr.list(status=S.SUCCESS, limit=2)] == ids["a"][:2]
    assert mgr.list(limit=0) == []
    assert len(mgr.list(limit=-1)) == 7
    assert [t.id for t in mgr.list(ids=[ids["b"][1], ids["a"][0], 99999])] == [ids["a"][0], ids["b"][1]]
    assert mgr.list(graphspace="other") == []


def test_pages_walk_every_task_once_and_end_with_none(mgr: TaskManager) -> None:
    all_ids = mgr.submit_many("echo", range(7))
    mgr.wait(all_ids[-1], WAIT)
    seen, token, pages = [], "", 0
    while token is not None:
        page = mgr.list(limit=3, page=token)
        assert isinstance(page, TaskPage)
        seen += [t.id for t in page.tasks]
        token = page.next_page
        pages += 1
    assert seen == all_ids and pages == 3
    whole = mgr.list(limit=-1, page="")
    assert [t.id for t in whole.tasks] == all_ids and whole.next_page is None
    exact = mgr.list(limit=7, page="")
    assert exact.next_page is None


# ------------------------------------------------------------------ waiting
def test_wait_times_out_with_a_clear_error(mgr: TaskManager, gates: Gates) -> None:
    tid = mgr.submit("gate")
    gates.wait_started(tid)
    with pytest.raises(WaitTimeout, match=f"task {tid} is still RUNNING after 0.05 s"):
        mgr.wait(tid, 0.05)
    gates.release.set()
    assert mgr.wait(tid, WAIT).status is S.SUCCESS


# -------------------------------------------------------------- cancellation
def test_cancelling_a_running_cooperative_task_ends_cancelled(mgr: TaskManager, gates: Gates) -> None:
    tid = mgr.submit("sleepy")
    gates.wait_started(tid)
    assert mgr.cancel(tid) is True
    task = mgr.wait(tid, WAIT)
    assert task.status is S.CANCELLED
    assert task.progress == 1  # the last value the callable set is saved
    assert _history_obeys_the_table(mgr, tid)[-3:] == [S.RUNNING, S.CANCELLING, S.CANCELLED]


def test_a_task_that_never_looks_ends_as_what_really_happened(mgr: TaskManager, gates: Gates) -> None:
    tid = mgr.submit("gate")
    gates.wait_started(tid)
    mgr.cancel(tid)
    assert mgr.get(tid).status is S.CANCELLING
    with pytest.raises(CannotCancel, match=f"^Can't cancel task '{tid}' which is completed or cancelling$"):
        mgr.cancel(tid)
    gates.release.set()
    task = mgr.wait(tid, WAIT)
    assert task.status is S.SUCCESS and task.result == '"released"'
    assert _history_obeys_the_table(mgr, tid)[-2:] == [S.CANCELLING, S.SUCCESS]


def test_ctx_wait_reports_a_cancel_without_raising(mgr: TaskManager) -> None:
    """ctx.wait is ctx.sleep for a callable that stops its own way: False when the time
    passed, True on a cancel; whatever the callable then returns is what really happened."""
    started = threading.Event()

    def tidy(ctx: TaskContext) -> str:
        assert ctx.wait(0.01) is False
        started.set()
        woke = ctx.wait(WAIT)
        return f"cleaned up (woke={woke}, cancelled={ctx.cancelled})"

    mgr.register("tidy", tidy)
    tid = mgr.submit("tidy")
    assert started.wait(WAIT)
    mgr.cancel(tid)
    task = mgr.wait(tid, WAIT)
    assert task.status is S.SUCCESS and task.result == '"cleaned up (woke=True, cancelled=True)"'
    assert _history_obeys_the_table(mgr, tid)[-2:] == [S.CANCELLING, S.SUCCESS]


def test_a_cancel_before_the_first_sleep_wakes_it_at_once(mgr: TaskManager) -> None:
    cancelled = threading.Event()

    def late_sleeper(ctx: TaskContext) -> None:
        assert cancelled.wait(WAIT)
        assert ctx.cancelled and ctx.wait(0) is True
        ctx.sleep(WAIT)  # raises at once: the request came before any wait made the event

    mgr.register("late_sleeper", late_sleeper)
    tid = mgr.submit("late_sleeper")
    mgr.cancel(tid)
    cancelled.set()
    assert mgr.wait(tid, WAIT).status is S.CANCELLED


def test_a_cancelled_outcome_is_committed_at_once_not_with_the_next_write(tmp_path, monkeypatch) -> None:
    """Outcomes ride along with the next write or wait for the flusher's next look; a CANCELLED one
    has someone watching for it and is committed by its worker at once."""
    from taskmgr.store import Store

    monkeypatch.setattr(Store, "LINGER", 2.0)  # the flusher would take two seconds
    monkeypatch.setattr(Store, "LINGER_MAX", 2.0)
    started = threading.Event()

    def sleeper(ctx: TaskContext) -> None:
        started.set()
        ctx.sleep(WAIT)

    with TaskManager(str(tmp_path / "c.db"), workers=1, poll_interval=60) as m:
        m.register("sleep", sleeper)
        tid = m.submit("sleep")
        assert started.wait(WAIT)
        m.cancel(tid)
        assert m.wait(tid, 1).status is S.CANCELLED


def test_a_cancel_that_loses_the_race_with_its_tasks_end_leaves_nothing_behind(tmp_path, gates: Gates,
                                                                               monkeypatch) -> None:
    """The cancel commits CANCELLING, then the callable (which never looks) returns and its worker
    lets go of the task before the cancel looks for it there: the cancel keeps it as an early
    cancel for a worker that will never come. The poll after next forgets it."""
    import time

    from conftest import register_test_types
    from taskmgr.testing import rooms

    with TaskManager(str(tmp_path / "race.db"), workers=1, poll_interval=0.05) as m:
        register_test_types(m, gates)
        tid = m.submit("gate")
        gates.wait_started(tid)
        store, runner = rooms(m).store, rooms(m).runner
        real_write = store.write

        def write_then_let_the_task_end(fn, *args, **kwargs):
            out = real_write(fn, *args, **kwargs)
            gates.release.set()
            deadline = time.monotonic() + WAIT
            while runner.is_running(tid):
                assert time.monotonic() < deadline
                time.sleep(0.001)
            return out

        monkeypatch.setattr(store, "write", write_then_let_the_task_end)
        assert m.cancel(tid)
        monkeypatch.undo()
        assert tid in runner.early_cancels  # the race happened
        deadline = time.monotonic() + WAIT
        while tid in runner.early_cancels:
            assert time.monotonic() < deadline, "the early cancel of a finished task was never forgotten"
            time.sleep(0.01)
        assert m.wait(tid, WAIT).status.terminal


def test_a_task_cancelled_while_queued_never_runs(mgr: TaskManager, gates: Gates) -> None:
    blockers = [mgr.submit("gate") for _ in range(2)]  # both workers busy
    for b in blockers:
        gates.wait_started(b)
    queued = mgr.submit("echo", "never")
    assert mgr.get(queued).status is S.QUEUED
    mgr.cancel(queued)
    assert mgr.get(queued).status is S.CANCELLED
    gates.release.set()
    for b in blockers:
        mgr.wait(b, WAIT)
    assert queued not in gates.ran
    assert mgr.get(queued).status is S.CANCELLED


@pytest.mark.parametrize("status", [S.SUCCESS, S.FAILED])
def test_a_finished_task_cannot_be_cancelled(mgr: TaskManager, status: TaskStatus) -> None:
    tid = mgr.submit("echo" if status is S.SUCCESS else "fail", 1)
    mgr.wait(tid, WAIT)
    with pytest.raises(CannotCancel):
        mgr.cancel(tid)
    assert mgr.get(tid).status is status


def test_a_callable_raising_task_cancelled_on_its_own_fails(mgr: TaskManager) -> None:
    from taskmgr import TaskCancelled

    def rogue(ctx: TaskContext) -> None:
        raise TaskCancelled("not really")

    mgr.register("rogue", rogue)
    task = mgr.wait(mgr.submit("rogue"), WAIT)
    assert task.status is S.FAILED and task.result == "TaskCancelled: not really"


# ------------------------------------------------------------------ deletion
def test_deleting_an_incomplete_task_needs_force(mgr: TaskManager, gates: Gates) -> None:
    tid = mgr.submit("gate")
    gates.wait_started(tid)
    with pytest.raises(IncompleteTask) as info:
        mgr.delete(tid)
    assert str(info.value) == (
        f"Can't delete incomplete task '{tid}' in status RUNNING, Please try to cancel the task first"
    )
    assert mgr.get(tid).status is S.RUNNING


def test_a_force_deleted_running_task_never_comes_back(mgr: TaskManager, gates: Gates) -> None:
    tid = mgr.submit("gate")
    gates.wait_started(tid)
    assert mgr.delete(tid, force=True) is S.RUNNING
    with pytest.raises(TaskNotFound):
        mgr.get(tid)
    gates.release.set()
    after = mgr.wait(mgr.submit("echo", 1), WAIT)  # the gate task's outcome is written before this one's
    assert after.status is S.SUCCESS
    with pytest.raises(TaskNotFound):
        mgr.get(tid)
    assert mgr.history(tid) == []


def test_a_force_deleted_queued_task_never_starts(mgr: TaskManager, gates: Gates) -> None:
    blockers = [mgr.submit("gate") for _ in range(2)]
    for b in blockers:
        gates.wait_started(b)
    queued = mgr.submit("echo", "never")
    mgr.delete(queued, force=True)
    gates.release.set()
    for b in blockers:
        mgr.wait(b, WAIT)
    mgr.wait(mgr.submit("echo", 1), WAIT)
    assert queued not in gates.ran


def test_a_finished_task_is_deleted_without_force(mgr: TaskManager) -> None:
    tid = mgr.submit("echo", 1)
    mgr.wait(tid, WAIT)
    assert mgr.delete(tid) is S.SUCCESS
    with pytest.raises(TaskNotFound):
        mgr.get(tid)


# ---------------------------------------------------------- suspend / resume
def test_suspend_holds_a_queued_task_until_resumed(mgr: TaskManager, gates: Gates) -> None:
    blockers = [mgr.submit("gate") for _ in range(2)]
    for b in blockers:
        gates.wait_started(b)
    held = mgr.submit("echo", "held")
    mgr.suspend(held)
    assert mgr.get(held).status is S.PENDING
    gates.release.set()
    for b in blockers:
        mgr.wait(b, WAIT)
    mgr.wait(mgr.submit("echo", 1), WAIT)
    assert held not in gates.ran and mgr.get(held).status is S.PENDING
    mgr.resume(held)
    assert mgr.wait(held, WAIT).status is S.SUCCESS
    assert _history_obeys_the_table(mgr, held) == [
        S.NEW, S.QUEUED, S.PENDING, S.RESTORING, S.QUEUED, S.RUNNING, S.SUCCESS,
    ]
    assert mgr.get(held).retries == 0  # it never ran before: not a re-run


def test_a_running_task_cannot_be_suspended(mgr: TaskManager, gates: Gates) -> None:
    tid = mgr.submit("gate")
    gates.wait_started(tid)
    with pytest.raises(InvalidTransition, match=f"Can't suspend task '{tid}' in status RUNNING"):
        mgr.suspend(tid)
    assert mgr.get(tid).status is S.RUNNING


def test_only_pending_or_unknown_tasks_can_be_resumed(mgr: TaskManager) -> None:
    tid = mgr.submit("echo", 1)
    mgr.wait(tid, WAIT)
    with pytest.raises(InvalidTransition, match=f"Can't resume task '{tid}' in status SUCCESS"):
        mgr.resume(tid)


def test_a_delayed_task_waits_in_pending_then_runs(mgr: TaskManager) -> None:
    tid = mgr.submit("echo", "later", delay=0.2)
    assert mgr.get(tid).status is S.PENDING
    assert mgr.wait(tid, WAIT).status is S.SUCCESS
    assert _history_obeys_the_table(mgr, tid) == [S.NEW, S.PENDING, S.RESTORING, S.QUEUED, S.RUNNING, S.SUCCESS]


def test_a_suspended_delayed_task_does_not_wake_by_itself(mgr: TaskManager) -> None:
    tid = mgr.submit("echo", "later", delay=0.05)
    mgr.suspend(tid)
    with pytest.raises(WaitTimeout):
        mgr.wait(tid, 0.4)
    assert mgr.get(tid).status is S.PENDING


# ------------------------------------------------------------------- retries
def test_retries_rerun_with_backoff_and_count_each_rerun(mgr: TaskManager) -> None:
    attempts = []

    def flaky(ctx: TaskContext) -> int:
        attempts.append(ctx.retries)
        if len(attempts) < 3:
            raise RuntimeError(f"attempt {len(attempts)}")
        return len(attempts)

    mgr.register("flaky", flaky, max_retries=5, retry_delay=0.01)
    task = mgr.wait(mgr.submit("flaky"), WAIT)
    assert task.status is S.SUCCESS and task.result == "3" and task.retries == 2
    assert attempts == [0, 1, 2]
    path = _history_obeys_the_table(mgr, task.id)
    assert path.count(S.PENDING) == 2 and path.count(S.RUNNING) == 3


def test_retries_run_out_then_the_task_fails(mgr: TaskManager) -> None:
    task = mgr.wait(mgr.submit("fail", max_retries=2, retry_delay=0.01), WAIT)
    assert task.status is S.FAILED and task.retries == 2 and task.result == "ValueError: bad input"


def test_a_task_waiting_to_retry_can_be_cancelled(mgr: TaskManager) -> None:
    tid = mgr.submit("fail", max_retries=1, retry_delay=30)
    for _ in range(200):  # bounded: wait for the first failure to be recorded
        if mgr.get(tid).status is S.PENDING:
            break
        mgr.wait(mgr.submit("echo", 0), WAIT)
    assert mgr.get(tid).status is S.PENDING
    assert mgr.get(tid).result == "ValueError: bad input"
    mgr.cancel(tid)
    assert mgr.get(tid).status is S.CANCELLED


# ------------------------------------------------------------------ progress
def test_progress_is_persisted_while_running_and_readable_elsewhere(mgr: TaskManager, gates: Gates, db_path) -> None:
    import threading

    step = threading.Event()

    def counter(ctx: TaskContext) -> int:
        ctx.progress = 41
        step.set()
        ctx.sleep(30)
        return 0

    mgr.register("counter", counter)
    tid = mgr.submit("counter")
    assert step.wait(WAIT)
    reader = TaskManager(db_path)  # an idle manager: another reader of the same file
    for _ in range(400):
        if reader.get(tid).progress == 41:
            break
        mgr.wait(mgr.submit("echo", 0), WAIT)  # pass time by doing work, not by sleeping
    assert reader.get(tid).progress == 41
    reader.shutdown()
    mgr.cancel(tid)
    mgr.wait(tid, WAIT)


@pytest.mark.parametrize("bad", [1.5, "3", None, True, 2**63])
def test_progress_must_be_a_64_bit_integer(bad: object) -> None:
    ctx = TaskContext(1, "t", "n", None)
    with pytest.raises(InvalidArgument, match="progress must"):
        ctx.progress = bad  # type: ignore[assignment]
    ctx.progress = -5
    assert ctx.progress == -5


# ------------------------------------------------------------------ lifecycle
def test_a_manager_cannot_start_twice_or_be_used_after_shutdown(db_path: str) -> None:
    m = TaskManager(db_path)
    m.register("echo", lambda ctx: 1)
    assert m.state == "idle"
    m.start()
    assert m.state == "running"
    with pytest.raises(ManagerStateError, match="Cannot start the task manager when it is in the 'running' state"):
        m.start()
    m.shutdown()
    assert m.state == "shut down"
    m.shutdown()  # idempotent
    with pytest.raises(ManagerStateError, match="shut down"):
        m.submit("echo")


class _ProtocolOnly:
    """Every method the manager calls on an executor, but no ExecutorBase: refused (the base
    gives the optional methods their defaults)."""

    synchronous, manual_clock, workers = False, False, 1
    waiting = 0

    def start(self) -> None: ...
    def submit(self, fn, reserved: bool = False) -> None: ...
    def call_at(self, when, fn) -> None: ...
    def every(self, seconds, fn) -> None: ...
    def shutdown(self, wait: bool = True) -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"workers": 0}, "workers must be a positive integer, got 0"),
        ({"executor": "threads"}, "executor must be 'pool', 'inline' or an instance of a taskmgr.executor.ExecutorBase subclass"),
        ({"executor": _ProtocolOnly()}, "an instance of a taskmgr.executor.ExecutorBase subclass"),
        ({"synchronous": "sometimes"}, "synchronous must be one of OFF, NORMAL, FULL, EXTRA"),
        ({"max_input_size": 0}, "max_input_size must be a positive number of bytes"),
        ({"poll_interval": 0}, "poll_interval must be a positive number of seconds"),
    ],
)
def test_bad_manager_settings_are_refused_by_name(db_path: str, kwargs: dict, text: str) -> None:
    with pytest.raises(InvalidArgument, match=text.replace("(", r"\(")):
        TaskManager(db_path, **kwargs)


@pytest.mark.parametrize("target", [":memory:", "", "/no/such/dir/t.db"])
def test_a_database_that_cannot_be_a_file_is_refused(target: str) -> None:
    with pytest.raises(InvalidArgument):
        TaskManager(target)


def test_task_types_are_validated_and_registered_once(mgr: TaskManager) -> None:
    with pytest.raises(InvalidArgument, match="task type must be"):
        mgr.register("has space", lambda ctx: 1)
    with pytest.raises(InvalidArgument, match="already registered"):
        mgr.register("echo", lambda ctx: 2)
    with pytest.raises(InvalidArgument, match="not callable"):
        mgr.register("x", 3)  # type: ignore[arg-type]


def test_a_task_submitted_to_an_idle_manager_is_claimed_by_a_started_one(db_path: str, gates: Gates) -> None:
    from conftest import register_test_types

    client = TaskManager(db_path)
    register_test_types(client, gates)
    tid = client.submit("echo", "from a client")
    assert client.get(tid).status is S.NEW
    server = TaskManager(db_path, poll_interval=0.05)
    register_test_types(server, gates)
    with server:
        assert server.wait(tid, WAIT).status is S.SUCCESS
        late = client.submit("echo", "while running")
        assert client.wait(late, WAIT).status is S.SUCCESS
    client.shutdown()


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES)
def test_the_stored_json_of_a_value_is_what_json_dumps_writes(value):
    # the manager's encoder made once (the C one, and the fallback where that is missing)
    # writes exactly what json.dumps with the same options writes, byte for byte
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert codec.dumps(value) == expected
    assert codec.PLAIN.encode(value) == expected


def test_the_encoder_falls_back_to_the_plain_one_without_the_c_encoder(monkeypatch):
    import json.encoder

    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    dumps = codec.make_dumps()
    assert dumps == codec.PLAIN.encode
    assert dumps({"é": [1, None]}) == '{"é":[1,null]}'
