"""TaskManager.wait_many, and reading tasks by ids in parts (Store.select)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import WAIT, Gates
from taskmgr import InvalidArgument, TaskContext, TaskManager, TaskNotFound, WaitTimeout
from taskmgr import TaskStatus as S
from taskmgr.store import Store
from taskmgr.testing import rooms


@pytest.fixture
def slow_poll(db_path: str, gates: Gates) -> Iterator[TaskManager]:
    """A started manager whose poll is too slow to matter: what it learns, it learns from commits."""
    m = TaskManager(db_path, workers=3, poll_interval=30)
    release = {name: threading.Event() for name in ("a", "b")}

    @m.task("held")
    def held(ctx: TaskContext) -> str:
        gates.started[ctx.task_id].set()
        assert release[ctx.input].wait(WAIT)
        return str(ctx.input)

    @m.task("boom")
    def boom(ctx: TaskContext) -> None:
        raise ValueError("bad input")

    m.release = release  # type: ignore[attr-defined]
    m.start()
    yield m
    for event in release.values():
        event.set()
    m.shutdown(wait=True)


def test_returns_every_task_terminal_in_the_order_given(mgr: TaskManager) -> None:
    ok = mgr.submit_many("echo", [1, 2, 3])
    bad = mgr.submit("fail")
    order = [ok[2], bad, ok[0], ok[2], ok[1]]  # repeated ids come back repeated
    tasks = mgr.wait_many(order, WAIT)
    assert [t.id for t in tasks] == order
    assert [t.status for t in tasks] == [S.SUCCESS, S.FAILED, S.SUCCESS, S.SUCCESS, S.SUCCESS]
    assert [t.result_value for t in tasks if t.status is S.SUCCESS] == [3, 1, 3, 2]
    assert tasks == [mgr.get(i) for i in order]  # what a get reads afterwards, nothing older
    assert mgr.wait_many([]) == []


def test_refuses_bad_and_unknown_ids(mgr: TaskManager) -> None:
    tid = mgr.submit("echo")
    with pytest.raises(InvalidArgument, match="task id must be a positive integer, got 'x'"):
        mgr.wait_many([tid, "x"])  # type: ignore[list-item]
    with pytest.raises(TaskNotFound) as err:
        mgr.wait_many([tid, 99999], WAIT)
    assert err.value.task_id == 99999


def test_times_out_naming_how_many_and_the_first(mgr: TaskManager, gates: Gates) -> None:
    done = mgr.submit("echo")
    held = mgr.submit("gate")
    gates.wait_started(held)
    with pytest.raises(WaitTimeout, match=rf"^1 of 2 tasks are still not terminal after 0.05 s; "
                                          rf"the first is task {held}, RUNNING$"):
        mgr.wait_many([done, held], 0.05)
    gates.release.set()
    assert [t.status for t in mgr.wait_many([done, held], WAIT)] == [S.SUCCESS, S.SUCCESS]


def test_woken_by_the_commits_that_finish_the_tasks(slow_poll: TaskManager, gates: Gates) -> None:
    """With a 30 s poll, only the commits can wake it within the 10 s bound."""
    first, second = slow_poll.submit("held", "a"), slow_poll.submit("held", "b")
    boom = slow_poll.submit("boom")
    gates.wait_started(first)
    gates.wait_started(second)
    out: list[object] = []
    waiter = threading.Thread(target=lambda: out.append(slow_poll.wait_many([first, boom, second], WAIT)))
    waiter.start()
    slow_poll.release["a"].set()  # type: ignore[attr-defined]
    slow_poll.release["b"].set()  # type: ignore[attr-defined]
    waiter.join(WAIT + 5)
    assert not waiter.is_alive()
    tasks = out[0]
    assert isinstance(tasks, list)
    assert [(t.id, t.status) for t in tasks] == [(first, S.SUCCESS), (boom, S.FAILED), (second, S.SUCCESS)]


def test_two_waiters_each_hear_their_own_tasks(slow_poll: TaskManager, gates: Gates) -> None:
    """Each waiter is woken by the commit of its own task, and takes out only its own watch."""
    a, b = slow_poll.submit("held", "a"), slow_poll.submit("held", "b")
    gates.wait_started(a)
    gates.wait_started(b)
    results: dict[str, object] = {}

    def waiter(name: str, task_id: int) -> None:
        try:
            results[name] = slow_poll.wait_many([task_id], WAIT)[0].status
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[name] = exc

    waiters = rooms(slow_poll).waiters
    first = threading.Thread(target=waiter, args=("a", a))
    first.start()
    _until(lambda: waiters.watching == 1)
    second = threading.Thread(target=waiter, args=("b", b))
    second.start()
    _until(lambda: waiters.watching == 2)
    slow_poll.release["b"].set()  # type: ignore[attr-defined]
    second.join(WAIT + 5)
    slow_poll.release["a"].set()  # type: ignore[attr-defined]
    first.join(WAIT + 5)
    assert results == {"a": S.SUCCESS, "b": S.SUCCESS}
    assert waiters.watching == 0


def test_sees_changes_made_by_another_process_at_its_poll(db_path: str, gates: Gates) -> None:
    """No commit of its own tells it: the cancel comes through another manager on the same file."""
    with TaskManager(db_path, poll_interval=0.05, workers=1) as here:
        here.register("noop", lambda ctx: None)
        tid = here.submit("noop", delay=3600)  # PENDING for an hour
        other = TaskManager(db_path)
        try:
            timer = threading.Timer(0.2, other.cancel, args=(tid,))
            timer.start()
            assert here.wait_many([tid], WAIT)[0].status is S.CANCELLED
            timer.join()
        finally:
            other.shutdown()


def test_a_timeout_comes_only_after_a_last_read_of_every_task(db_path: str) -> None:
    """Another process's change is seen by the pass over every task each poll_interval; with a
    poll longer than the timeout, only a last pass before the timeout can see it."""
    with TaskManager(db_path, poll_interval=30, workers=1) as here:
        here.register("noop", lambda ctx: None)
        tid = here.submit("noop", delay=3600)
        other = TaskManager(db_path)
        try:
            timer = threading.Timer(0.1, other.cancel, args=(tid,))
            timer.start()
            assert here.wait_many([tid], 0.5)[0].status is S.CANCELLED
            timer.join()
        finally:
            other.shutdown()


def test_a_timeout_names_the_status_the_task_has_then(db_path: str) -> None:
    """The task was QUEUED at the first read and RUNNING by the timeout: the message says RUNNING."""
    release = {name: threading.Event() for name in ("a", "b")}
    m = TaskManager(db_path, workers=1, poll_interval=30)
    m.register("held", lambda ctx: release[ctx.input].wait(WAIT))
    with m:
        first, second = m.submit("held", "a"), m.submit("held", "b")  # one worker: the second waits
        threading.Timer(0.1, release["a"].set).start()
        try:
            with pytest.raises(WaitTimeout, match=rf"the first is task {second}, RUNNING$"):
                m.wait_many([second], 0.6)
        finally:
            release["a"].set()
            release["b"].set()
        assert m.wait(first, WAIT).status is S.SUCCESS


def test_a_pass_over_unfinished_tasks_reads_their_statuses_not_their_rows(db_path: str, monkeypatch) -> None:
    """Rows are read once, when a task is found terminal: a wait on many unfinished tasks must not
    build them all again at every pass."""
    with TaskManager(db_path, poll_interval=0.02, workers=1) as m:
        m.register("noop", lambda ctx: None)
        waiting = m.submit_many("noop", [None] * 1500, delay=3600)
        done = m.submit("noop")
        m.wait(done, WAIT)
        rows_read: list[int] = []
        select = Store.select

        def counting(self, **kw):  # type: ignore[no-untyped-def]
            found = select(self, **kw)
            rows_read.append(len(found))
            return found

        assert type(rooms(m).store) is Store
        monkeypatch.setattr(Store, "select", counting)
        with pytest.raises(WaitTimeout, match="^1500 of 1501 tasks are still not terminal"):
            m.wait_many([done, *waiting], 0.3)
        assert sum(rows_read) == 1  # the finished one, once


def test_a_task_deleted_meanwhile_is_reported(db_path: str) -> None:
    with TaskManager(db_path, poll_interval=0.05, workers=1) as m:
        m.register("noop", lambda ctx: None)
        tid = m.submit("noop", delay=3600)
        timer = threading.Timer(0.2, lambda: m.delete(tid, force=True))
        timer.start()
        with pytest.raises(TaskNotFound) as err:
            m.wait_many([tid], WAIT)
        timer.join()
        assert err.value.task_id == tid


# ------------------------------------------------------- reading by ids in parts
@settings(max_examples=60, deadline=None)
@given(
    wanted=st.lists(st.integers(min_value=1, max_value=40), max_size=30),
    limit=st.one_of(st.just(-1), st.integers(min_value=0, max_value=30)),
    per_read=st.sampled_from([1, 2, 3, 4, 7, 512]),
)
def test_list_by_ids_reads_in_parts_like_in_one(tmp_path_factory: pytest.TempPathFactory, wanted: list[int],
                                                 limit: int, per_read: int) -> None:
    """Any list of ids, any limit, any part size: the stored ones among them, ascending, once each."""
    path = str(tmp_path_factory.mktemp("ids") / "t.db")
    with TaskManager(path, executor="inline") as m:
        m.register("noop", lambda ctx: None)
        m.submit_many("noop", [None] * 25)  # ids 1..25; 26..40 do not exist
        rooms(m).store.IDS_PER_READ = per_read
        got = [t.id for t in m.list(ids=wanted, limit=limit)]
    expected = sorted({i for i in wanted if i <= 25})
    assert got == (expected if limit < 0 else expected[:limit])


def test_a_long_list_of_ids_is_one_of_a_few_statements(mgr: TaskManager) -> None:
    ids = mgr.submit_many("echo", list(range(1300)))
    assert [t.id for t in mgr.wait_many(ids, WAIT)] == ids
    listed = mgr.list(ids=[*ids, *range(10**6, 10**6 + 40_000)], limit=-1)  # past SQLite's 32,766 parameters
    assert [t.id for t in listed] == ids
    store = rooms(mgr).store
    shapes = store.list_shapes
    for n in range(1, 101):
        assert [t.id for t in mgr.list(ids=ids[:n])] == ids[:n]
    assert store.list_shapes - shapes <= 8  # widths 1, 2, 4, ... 128 at most


def _until(cond: object) -> None:
    import time

    deadline = time.monotonic() + WAIT
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)
