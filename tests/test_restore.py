"""Restore on start: rows a dead node left, in every status, and records that cannot be run."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time

import pytest

from conftest import WAIT, Gates, register_test_types, registered_nodes, sql, task_column
from taskmgr import TaskContext, TaskManager, TaskStatus, UnknownTaskType, can_move
from taskmgr import _moves as moves
from taskmgr._node import Node
from taskmgr.testing import StepExecutor, rooms

S = TaskStatus


def _leave_behind(db_path: str, gates: Gates, statuses: list[TaskStatus], *, type_: str = "echo", **fields) -> list[int]:
    """Rows as a node that died would leave them: owned by a node that no longer exists (written
    with raw SQL, behind the store's back)."""
    m = TaskManager(db_path)
    register_test_types(m, gates)
    ids = m.submit_many(type_, [{"n": i} for i in range(len(statuses))])
    m.shutdown()
    assert all(name.isidentifier() for name in fields)
    sets = "".join(f", {name} = ?" for name in fields)
    with contextlib.closing(sqlite3.connect(db_path, timeout=WAIT)) as conn, conn:
        conn.executemany(
            f"UPDATE taskmgr_task SET status = ?, owner = 'gone-host:1:dead', ran = ?{sets} WHERE id = ?",
            [(st.value, int(st in (S.RUNNING, S.CANCELLING)), *fields.values(), tid) for tid, st in zip(ids, statuses)],
        )
    return ids


RESTORED_PATHS = {
    S.NEW: [S.QUEUED],
    S.SCHEDULING: [S.NEW, S.QUEUED],
    S.SCHEDULED: [S.QUEUED],
    S.QUEUED: [S.RESTORING, S.QUEUED],
    S.RUNNING: [S.RESTORING, S.QUEUED],
    S.RESTORING: [S.QUEUED],
}


@pytest.mark.parametrize("status", list(RESTORED_PATHS))
def test_a_dead_nodes_task_is_restored_by_the_tables_paths_and_runs(db_path: str, gates: Gates, status) -> None:
    (tid,) = _leave_behind(db_path, gates, [status])
    m = TaskManager(db_path, poll_interval=0.05)
    register_test_types(m, gates)
    with m:
        task = m.wait(tid, WAIT)
        # the rows were put in `status` behind the store's back: check the moves made from there on
        moves = m.history(tid)[1:]  # [0] is the creation by the idle manager
    assert task.status is S.SUCCESS
    assert moves[0].from_status is status
    assert [mv.to_status for mv in moves] == [*RESTORED_PATHS[status], S.RUNNING, S.SUCCESS]
    for a, b in zip(moves, moves[1:]):
        assert a.to_status == b.from_status and can_move(b.from_status, b.to_status)
    assert task.retries == (1 if status is S.RUNNING else 0)


def test_a_cancelling_task_of_a_dead_node_ends_cancelled(db_path: str, gates: Gates) -> None:
    (tid,) = _leave_behind(db_path, gates, [S.CANCELLING])
    m = TaskManager(db_path)
    register_test_types(m, gates)
    with m:
        assert m.get(tid).status is S.CANCELLED
    assert tid not in gates.ran


def test_a_pending_task_of_a_dead_node_keeps_waiting(db_path: str, gates: Gates) -> None:
    (tid,) = _leave_behind(db_path, gates, [S.PENDING])
    m = TaskManager(db_path)
    register_test_types(m, gates)
    with m:
        assert m.get(tid).status is S.PENDING
        m.resume(tid)
        assert m.wait(tid, WAIT).status is S.SUCCESS


def test_tasks_of_a_live_node_are_left_alone(db_path: str, gates: Gates) -> None:
    a = TaskManager(db_path, poll_interval=0.05)
    register_test_types(a, gates)
    with a:
        tid = a.submit("gate")
        gates.wait_started(tid)
        b = TaskManager(db_path, poll_interval=0.05)
        register_test_types(b, gates)
        with b:
            assert b.get(tid).status is S.RUNNING
            assert b.get(tid).retries == 0
        gates.release.set()
        assert a.wait(tid, WAIT).status is S.SUCCESS


def test_a_node_taken_for_dead_registers_again_at_its_next_heartbeat(db_path: str, gates: Gates, caplog) -> None:
    """A node that stalled past node_timeout (a suspended machine, a paused process) was reaped by
    another node: its row is gone. It used to heartbeat into nothing from then on, and every node
    that started later took its tasks over, the ones it was running included, and ran them again."""
    a = TaskManager(db_path, poll_interval=0.05, node_timeout=0.6)  # renews its lease every 0.2 s
    register_test_types(a, gates)
    with a:
        tid = a.submit("gate")
        gates.wait_started(tid)
        sql(db_path, "DELETE FROM taskmgr_node WHERE node = ?", (a.node,))  # what the node that found it dead did
        deadline = time.monotonic() + WAIT
        while a.node not in registered_nodes(db_path):  # at its next renewal
            assert time.monotonic() < deadline, "the node did not register again"
            time.sleep(0.02)
        assert "registered it again" in caplog.text
        b = TaskManager(db_path, poll_interval=0.05)
        register_test_types(b, gates)
        with b:  # a node that starts now leaves the running task alone
            assert b.get(tid).status is S.RUNNING and b.get(tid).retries == 0
        gates.release.set()
        assert a.wait(tid, WAIT).status is S.SUCCESS
    assert gates.ran.count(tid) == 1


def test_an_unregistered_type_is_left_unowned_and_runnable_and_runs_once_registered(db_path: str, gates: Gates) -> None:
    """A node that does not run a dead node's task type hands the task on to whoever does: RESTORING
    and nobody's, never UNKNOWN (it used to be marked UNKNOWN, to be resumed by hand)."""
    (tid,) = _leave_behind(db_path, gates, [S.QUEUED])
    m = TaskManager(db_path, poll_interval=0.05)
    m.register("other", lambda ctx: 0)
    with m:
        task = m.get(tid)
        assert (task.status, task.result, task.retries) == (S.RESTORING, None, 0)
        assert task_column(db_path, tid, "owner") is None
        time.sleep(0.2)  # a few polls: none claims a task of a type this node does not run
        assert m.get(tid).status is S.RESTORING and tid not in gates.ran
        register_test_types(m, gates)  # a type registered after start() is claimed from then on
        assert m.wait(tid, WAIT).status is S.SUCCESS
    reader = TaskManager(db_path)
    try:
        moves_made = [mv.to_status for mv in reader.history(tid)][1:]  # [0] is the creation
        assert moves_made == [S.RESTORING, S.QUEUED, S.RUNNING, S.SUCCESS]
    finally:
        reader.shutdown()


def test_an_unregistered_types_task_is_run_by_the_next_start_that_knows_the_type(db_path: str, gates: Gates) -> None:
    (tid,) = _leave_behind(db_path, gates, [S.QUEUED])
    first = TaskManager(db_path)
    first.register("other", lambda ctx: 0)
    with first:
        assert first.get(tid).status is S.RESTORING
    second = TaskManager(db_path, poll_interval=0.05)
    register_test_types(second, gates)
    with second:
        assert second.wait(tid, WAIT).status is S.SUCCESS


@pytest.mark.parametrize("owner", [None, "gone-host:1:dead"])
def test_unknown_tasks_left_by_an_earlier_version_are_restored_on_a_start_that_knows_their_type(
    db_path: str, gates: Gates, owner
) -> None:
    """Earlier versions marked UNKNOWN a task whose type the restoring node did not register (owned
    by that node, or, later, nobody's). A node that knows the type still restores such a record."""
    (tid,) = _leave_behind(db_path, gates, [S.QUEUED])
    sql(db_path, "UPDATE taskmgr_task SET status = 'unknown', owner = ?, result = ? WHERE id = ?",
        (owner, "UnknownTaskType: task type 'echo' is not registered in the process that restored it; "
                "register it and call resume() on the task (or restart)", tid))
    first = TaskManager(db_path)
    first.register("other", lambda ctx: 0)
    with first:  # a node that does not know the type leaves it as it is
        assert first.get(tid).status is S.UNKNOWN
    second = TaskManager(db_path, poll_interval=0.05)
    register_test_types(second, gates)
    with second:
        task = second.wait(tid, WAIT)
        assert (task.status, task.result_value) == (S.SUCCESS, {"n": 0})


def test_a_damaged_status_or_input_goes_unknown_and_never_crashes_start(db_path: str, gates: Gates) -> None:
    bad_status, bad_input, fine = _leave_behind(db_path, gates, [S.QUEUED, S.QUEUED, S.QUEUED])
    sql(db_path, "UPDATE taskmgr_task SET status = 'exploded' WHERE id = ?", (bad_status,))
    sql(db_path, "UPDATE taskmgr_task SET input = '{not json' WHERE id = ?", (bad_input,))
    m = TaskManager(db_path)
    assert m.get(bad_status).status is S.UNKNOWN  # reads never fail on a damaged row
    m.shutdown()
    m = TaskManager(db_path, poll_interval=0.05)
    register_test_types(m, gates)
    with m:
        assert m.wait(fine, WAIT).status is S.SUCCESS
        damaged = m.get(bad_status)
        assert damaged.status is S.UNKNOWN
        assert damaged.result == "DamagedRecord: stored status 'exploded' is not valid"
        undecodable = m.get(bad_input)
        assert undecodable.status is S.UNKNOWN
        assert undecodable.result == "InvalidInput: the stored task_input cannot be decoded"
        m.cancel(bad_input)
        assert m.get(bad_input).status is S.CANCELLED
        m.resume(bad_status)  # its input is fine: once declared UNKNOWN it can be brought back
        assert m.wait(bad_status, WAIT).status is S.SUCCESS


def test_an_interrupting_shutdown_hands_running_tasks_back_to_run_again(db_path: str, gates: Gates) -> None:
    m = TaskManager(db_path, poll_interval=0.05)
    register_test_types(m, gates)
    m.start()
    tid = m.submit("sleepy")
    gates.wait_started(tid)
    m.shutdown(wait=True, interrupt=True)
    reader = TaskManager(db_path)
    assert reader.get(tid).status is S.RESTORING
    reader.shutdown()
    gates.started.pop(tid)  # before the restart: the second run must set a fresh event
    again = TaskManager(db_path, poll_interval=0.05)
    register_test_types(again, gates)
    with again:
        gates.wait_started(tid)
        task = again.get(tid)
        assert task.status is S.RUNNING and task.retries == 1
        again.cancel(tid)
        assert again.wait(tid, WAIT).status is S.CANCELLED


def test_a_callable_that_returns_when_interrupted_ends_as_it_returned(db_path: str) -> None:
    m = TaskManager(db_path, poll_interval=0.05)
    started = threading.Event()

    def polite(ctx) -> str:
        started.set()
        while not ctx.interrupted:
            ctx.wait(WAIT)  # ctx.sleep without raising
        return "stopped early"

    m.register("polite", polite)
    m.start()
    tid = m.submit("polite")
    assert started.wait(WAIT)
    m.shutdown(interrupt=True)
    reader = TaskManager(db_path)
    task = reader.get(tid)
    reader.shutdown()
    assert task.status is S.SUCCESS and task.result == '"stopped early"'


def test_a_clean_shutdown_hands_queued_tasks_to_a_live_node(db_path: str, gates: Gates) -> None:
    a = TaskManager(db_path, workers=1, poll_interval=0.05)
    register_test_types(a, gates)
    b = TaskManager(db_path, poll_interval=0.05)
    register_test_types(b, gates)
    a.start()
    blocker = a.submit("gate")
    gates.wait_started(blocker)
    queued = a.submit("echo", "handed over")
    assert a.get(queued).status is S.QUEUED
    with b:
        gates.release.set()
        a.shutdown(wait=True)
        task = b.wait(queued, WAIT)
        assert task.status is S.SUCCESS and task.retries == 0
        assert [mv.to_status for mv in b.history(queued)][-4:] == [S.RESTORING, S.QUEUED, S.RUNNING, S.SUCCESS]


def test_resuming_a_task_of_an_unregistered_type_is_refused_by_a_started_node(db_path: str, gates: Gates) -> None:
    (tid,) = _leave_behind(db_path, gates, [S.PENDING])
    m = TaskManager(db_path)
    m.register("other", lambda ctx: 0)
    with m:
        with pytest.raises(UnknownTaskType, match="'echo' is not registered"):
            m.resume(tid)
        assert m.get(tid).status is S.PENDING


def test_a_shutdown_hands_back_tasks_written_running_that_no_worker_picked_up(db_path: str, gates: Gates) -> None:
    """A submit to free workers writes its tasks RUNNING; a shutdown right after must not leave
    one RUNNING that no callable runs: it ran (SUCCESS) or it is handed back, not as a retry."""
    from taskmgr.testing import check_history

    for _ in range(5):  # the race is the point: each round may land either way for each task
        m = TaskManager(db_path, workers=4, poll_interval=0.05)
        register_test_types(m, gates)
        m.start()
        ids = m.submit_many("echo", [1, 2, 3, 4])
        m.shutdown()
        reader = TaskManager(db_path)
        try:
            for task in reader.list(ids=ids):
                assert task.status in (S.SUCCESS, S.RESTORING), task
                if task.status is S.RESTORING:
                    assert task.retries == 0 and task.id not in gates.ran
            check_history(reader.history())
        finally:
            reader.shutdown()


def test_a_submit_that_commits_after_the_shutdowns_hand_back_is_left_for_any_node(db_path: str, gates: Gates,
                                                                                  monkeypatch) -> None:
    """A submit that saw the node running but commits after its shutdown handed back the node's
    tasks used to leave its task QUEUED, owned by a node that no longer exists and that no node
    takes for dead: acknowledged, and never run until a restart (found by review). It is now
    written as an idle manager writes it, unowned, and a live node claims it."""
    a = TaskManager(db_path, poll_interval=0.05)
    b = TaskManager(db_path, poll_interval=0.05)
    for m in (a, b):
        register_test_types(m, gates)
    b.start()
    a.start()
    gate = threading.Event()

    def inputs():
        gate.wait(WAIT)  # the submit has seen the node running, and waits here
        yield {"n": 1}

    got: list[list[int]] = []
    submit = threading.Thread(target=lambda: got.append(a.submit_many("echo", inputs())))
    submit.start()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writes: the shutdown's hand-back waits for it
    store = rooms(a).store
    handing_back = threading.Event()
    real_write = store.write

    def write(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        if fn is moves.release:
            handing_back.set()  # the shutdown's hand-back, after its executor closed
        return real_write(fn, *args, **kwargs)

    monkeypatch.setattr(store, "write", write)
    stop = threading.Thread(target=a.shutdown)
    stop.start()

    def until(what, cond) -> None:
        deadline = time.monotonic() + WAIT
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.005)

    until("the hand-back to wait for the lock", lambda: handing_back.is_set() and store.committing)
    gate.set()
    until("the submit to queue behind it", lambda: store.queued > 0)
    other.execute("ROLLBACK")
    other.close()
    submit.join(WAIT)
    stop.join(WAIT)
    (tid,) = got[0]
    try:
        assert b.wait(tid, WAIT).status is S.SUCCESS  # claimed and run by the live node
    finally:
        b.shutdown()


def test_a_node_waiting_for_its_running_tasks_in_shutdown_keeps_its_housekeeping(db_path: str) -> None:
    """shutdown(wait=True) (and the interpreter's exit) waits for running callables. Its node used
    to stop heartbeating meanwhile, so another node took it for dead and ran its task a second
    time, and a cancel from another process never reached the callable (found by review). The
    node now heartbeats, looks for remote cancels and saves progress until they have returned."""
    runs: list[int] = []

    def node() -> TaskManager:
        m = TaskManager(db_path, poll_interval=0.05, node_timeout=0.6)

        @m.task("long")
        def long(ctx) -> str:
            runs.append(ctx.task_id)
            ctx.progress = 1
            ctx.sleep(30)
            return "slept"

        return m

    a = node().start()
    tid = a.submit("long")
    deadline = time.monotonic() + WAIT
    while not runs:
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.01)
    stop = threading.Thread(target=a.shutdown)  # waits for the callable, 30 s unless cancelled
    stop.start()
    b = node().start()  # a live node whose heartbeat would take a silent one over after 0.6 s
    try:
        time.sleep(1.5)
        task = b.get(tid)
        assert (task.status, task.retries, runs) == (S.RUNNING, 0, [tid])  # still A's, run once
        t0 = time.monotonic()
        TaskManager(db_path).cancel(tid)  # an operator's process
        stop.join(WAIT)
        assert not stop.is_alive()
        assert time.monotonic() - t0 < 2.0  # seen at A's next poll, not after the 30 s
        assert b.get(tid).status is S.CANCELLED and runs == [tid]
    finally:
        b.shutdown()


def test_a_callable_can_use_its_manager_while_the_node_shuts_down(db_path: str) -> None:
    """shutdown(wait=True) lets running callables finish; one that submits, reads or cancels used
    to fail with "the task manager is shut down" (found by review). What it submits is written
    unowned, for any started node."""
    m = TaskManager(db_path, poll_interval=0.05)
    started, go = threading.Event(), threading.Event()

    @m.task("parent")
    def parent(ctx) -> int:
        started.set()
        assert go.wait(WAIT)
        child = m.submit("child", ctx.input)
        assert m.get(child).status is S.NEW
        return child

    m.register("child", lambda ctx: ctx.input * 2)
    m.register("long", lambda ctx: ctx.sleep(30))
    m.start()
    tid, long = m.submit("parent", 21), m.submit("long")
    assert started.wait(WAIT)
    stop = threading.Thread(target=m.shutdown)
    stop.start()
    deadline = time.monotonic() + WAIT
    while m.state != "stopping":
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert m.cancel(long)  # from this process, during the wait
    go.set()
    stop.join(WAIT)
    assert not stop.is_alive()
    other = TaskManager(db_path)
    other.register("child", lambda ctx: ctx.input * 2)
    with other:
        parent_task = other.get(tid)
        assert parent_task.status is S.SUCCESS
        assert other.get(long).status is S.CANCELLED
        assert other.wait(parent_task.result_value, WAIT).result_value == 42  # claimed and run here


def test_shutdown_called_by_a_tasks_own_callable_completes_once_it_returns(db_path: str) -> None:
    """It used to raise RuntimeError("cannot join current thread") and leave the node half shut
    down: registered, its store open, its queued tasks never handed back (found by review)."""
    m = TaskManager(db_path, workers=1, poll_interval=0.05)
    returned: list[object] = []

    @m.task("stopper")
    def stopper(ctx) -> str:
        returned.append(m.shutdown())  # returns at once: the shutdown waits for this callable
        return "stopping"

    m.register("other", lambda ctx: "ran")
    m.start()
    tid = m.submit("stopper")
    queued = m.submit("other")
    m.wait(tid, WAIT)
    (handler,) = [t for t in threading.enumerate() if t.name == "taskmgr-stopper"] or [None]
    assert handler is None or not handler.daemon  # a pool worker's threads are daemons: this one must
    # not be, or the interpreter's exit would cut the shutdown short
    deadline = time.monotonic() + WAIT
    while m.state != "shut down":
        assert time.monotonic() < deadline, "the shutdown did not complete"
        time.sleep(0.01)
    assert returned == [None]
    other = TaskManager(db_path)  # idle: it only reads
    try:
        assert other.get(tid).status is S.SUCCESS
        # handed back, run by the worker freed before the shutdown thread closed the pool, or (the
        # submit came after the callable's shutdown began) written unowned: never stuck on the node
        assert other.get(queued).status in (S.RESTORING, S.SUCCESS, S.NEW)
        assert registered_nodes(db_path) == []
    finally:
        other.shutdown()


def test_start_racing_shutdown_leaves_nothing_running(db_path: str) -> None:
    """A shutdown called while start() is under way waits for it, then stops the node: no
    scheduler thread, flusher or node row is left behind (found by review: threads leaked, and
    start failed with a misleading "restore() needs a started manager")."""
    before = threading.active_count()
    for i in range(10):
        m = TaskManager(db_path, workers=2, poll_interval=0.01)
        m.register("t", lambda ctx: 1)
        errors: list[BaseException] = []

        def start(m: TaskManager = m, errors: list[BaseException] = errors) -> None:
            try:
                m.start()
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)

        starter = threading.Thread(target=start)
        starter.start()
        time.sleep(0.0005 * i)
        m.shutdown()
        starter.join(WAIT)
        assert not starter.is_alive()
        assert all("Cannot start the task manager" in str(e) for e in errors), errors
    assert registered_nodes(db_path) == []
    deadline = time.monotonic() + WAIT
    while threading.active_count() > before:
        assert time.monotonic() < deadline, [t.name for t in threading.enumerate()]
        time.sleep(0.02)


def _gated_node(db_path: str, node_timeout: float = 30.0):
    m = TaskManager(db_path, poll_interval=0.02, node_timeout=node_timeout)
    started, go = threading.Event(), threading.Event()

    @m.task("held")
    def held(ctx) -> str:
        started.set()
        assert go.wait(WAIT)
        return "done"

    m.start()
    tid = m.submit("held")
    assert started.wait(WAIT)
    return m, tid, go


@pytest.mark.parametrize("where", ["on the stopper", "in a signal handler on the waiting thread"])
def test_a_shutdown_called_again_while_the_shutdown_goes_on_returns(db_path: str, monkeypatch, where: str) -> None:
    """A host's SIGTERM handler calling shutdown() while its main thread is already in shutdown()
    (waiting for a callable) deadlocked on the manager's own lock (found by review). The stop is
    carried out by the stopper thread: a shutdown() asked on it, or by a signal handler on the
    thread that waits for it, returns at once."""
    m, tid, go = _gated_node(db_path)
    calls: list[str] = []
    node = rooms(m).node
    real = node.keep_alive  # runs on the stopper while the callable is waited for

    def again() -> None:
        calls.append(threading.current_thread().name)
        m.shutdown()  # returns at once
        go.set()

    def keep_alive() -> None:
        if not calls:
            if where == "on the stopper":
                again()
            else:  # a signal: its handler runs on the main thread, which waits in shutdown()
                time.sleep(0.2)  # (it is in the wait by now)
                os.kill(os.getpid(), signal.SIGUSR1)
                deadline = time.monotonic() + WAIT
                while not calls:
                    assert time.monotonic() < deadline, "the signal handler did not run"
                    time.sleep(0.005)
        real()

    monkeypatch.setattr(node, "keep_alive", keep_alive)
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: again())
    try:
        m.shutdown()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    expected = "taskmgr-stopper" if where == "on the stopper" else threading.main_thread().name
    assert calls == [expected] and m.state == "shut down"


def test_a_shutdown_asked_on_the_thread_inside_start_runs_once_start_is_done(db_path: str, monkeypatch) -> None:
    m = TaskManager(db_path, poll_interval=0.02)
    m.register("t", lambda ctx: 1)
    node = rooms(m).node  # the node start() makes this manager
    real = node.restore

    def restore() -> int:
        m.shutdown()  # a signal handler while start() restores: it must not wait for start()
        return real()

    monkeypatch.setattr(node, "restore", restore)
    assert m.start() is m
    assert m.state == "shut down"
    assert registered_nodes(db_path) == []


def _let_the_stop_end(m: TaskManager, go: threading.Event) -> None:
    """After a test of an interrupted shutdown, pass or fail: let the stop end before the next test."""
    go.set()
    deadline = time.monotonic() + WAIT
    while m.state != "shut down" and time.monotonic() < deadline:
        time.sleep(0.01)



def test_an_interrupted_shutdown_leaves_the_stop_going_and_a_second_call_waits_for_it(
    db_path: str, monkeypatch
) -> None:
    """A second Ctrl-C while shutdown() waited for a callable used to deregister the node and close
    the store under the callable: its outcome was lost, its task left RUNNING under a node no
    longer registered, which no live node would take over (found by review). Then the node stayed
    but stopped heartbeating, and another node ran the task again (found by the next review). The
    interrupt now ends only the wait: the stopper goes on (lease, outcomes, hand-back, leave)."""
    m, tid, go = _gated_node(db_path, node_timeout=0.6)
    node = rooms(m).node
    real = node.keep_alive
    stopper: list[threading.Thread] = []

    def interrupting() -> None:  # the stopper's first look after the callable, while shutdown() waits
        if not stopper:
            stopper.append(threading.current_thread())
            time.sleep(0.2)  # the main thread is in shutdown()'s wait by now
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: KeyboardInterrupt on the waiting main thread
        real()

    try:
        with monkeypatch.context() as patch:
            patch.setattr(node, "keep_alive", interrupting)
            with pytest.raises(KeyboardInterrupt):
                m.shutdown()
        assert stopper[0].is_alive() and not stopper[0].daemon  # the stop goes on; the exit waits for it
        assert m.state == "stopping"
        assert m.node in registered_nodes(db_path)  # still registered
        b = TaskManager(db_path, poll_interval=0.02, node_timeout=0.6)
        b.register("held", lambda ctx: "run again")
        b.start()
        time.sleep(1.5)  # the stopper keeps the interrupted node alive: b does not take its task over
        assert b.get(tid).status is S.RUNNING and b.get(tid).retries == 0
        b.shutdown()
        go.set()
        assert m.wait(tid, WAIT).result_value == "done"  # the store is still open: the outcome is recorded
        m.shutdown()  # waits for the stopper
        assert m.state == "shut down"
        assert registered_nodes(db_path) == []
    finally:
        _let_the_stop_end(m, go)


def test_managers_whose_callables_shut_each_other_down_both_stop(db_path: str, tmp_path) -> None:
    """A callable's shutdown() of any manager goes on in a thread of its own: two callables each
    waiting for the other's manager would otherwise wait for good (found by review)."""
    a = TaskManager(db_path, poll_interval=0.02)
    b = TaskManager(str(tmp_path / "b.db"), poll_interval=0.02)
    both = threading.Barrier(2)

    def stopper(other: TaskManager):
        def fn(ctx) -> str:
            both.wait(WAIT)  # both callables run, then each shuts the other's manager down
            other.shutdown()
            return "asked"
        return fn

    a.register("stop", stopper(b))
    b.register("stop", stopper(a))
    a.start()
    b.start()
    a.submit("stop")
    b.submit("stop")
    deadline = time.monotonic() + WAIT
    while (a.state, b.state) != ("shut down", "shut down"):
        assert time.monotonic() < deadline, (a.state, b.state)
        time.sleep(0.02)


def test_a_shutdown_interrupted_in_its_last_writes_still_completes(db_path: str, monkeypatch) -> None:
    """A Ctrl-C while the shutdown made its last writes used to cut them short, leaving the node
    registered, for the exit hook to complete. Those writes are the stopper's: the interrupt ends
    only the wait, the stopper (no daemon: the interpreter's exit waits for it) completes them,
    and a second call waits for it."""
    m = TaskManager(db_path, poll_interval=0.02)
    m.register("t", lambda ctx: 1)
    m.start()
    node = rooms(m).node
    real = node.leave
    stopper: list[threading.Thread] = []
    go = threading.Event()

    def leave() -> None:  # the stop's last write: out of the registry
        stopper.append(threading.current_thread())
        time.sleep(0.2)  # the main thread is in shutdown()'s wait by now (it may not be at once)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: KeyboardInterrupt on the main thread, waiting in shutdown()
        assert go.wait(WAIT)
        real()

    monkeypatch.setattr(node, "leave", leave)
    try:
        with pytest.raises(KeyboardInterrupt):
            m.shutdown()
        assert stopper[0].is_alive() and not stopper[0].daemon  # the stop goes on; the exit waits for it
        assert m.state == "stopping" and m.node in registered_nodes(db_path)
        go.set()
        m.shutdown()  # waits for the stopper
        assert m.state == "shut down"
        assert registered_nodes(db_path) == []
    finally:
        _let_the_stop_end(m, go)


def test_a_shutdown_on_the_thread_leading_a_commit_goes_on_in_a_thread_of_its_own(db_path: str) -> None:
    """A host's signal handler calling shutdown() while its thread led a commit (a submit) closed
    the store from inside that commit: the close waited for the flusher, the flusher for the
    commit (found by review). Here a commit's callback plays the handler."""
    m = TaskManager(db_path, poll_interval=0.02)
    m.register("t", lambda ctx: 1)
    m.start()
    returned = threading.Event()

    def handler(ok, value) -> None:
        m.shutdown()
        returned.set()

    rooms(m).store.write_async(lambda tx: None, callback=handler)
    assert returned.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while m.state != "shut down":
        assert time.monotonic() < deadline, m.state
        time.sleep(0.01)


def test_a_node_taken_for_dead_cannot_overwrite_the_run_of_the_node_that_took_its_task_over(
    db_path: str, caplog
) -> None:
    """Node a stalls past node_timeout; node b finds it dead, takes its running task over and runs
    it again. When a's callable ends after all, its outcome and progress must not land on b's run:
    every write of a run is fenced by the owner, not by the status alone (both runs are RUNNING)."""
    a_go, b_started, b_go = threading.Event(), threading.Event(), threading.Event()

    def in_a(ctx: TaskContext) -> str:
        assert a_go.wait(WAIT)
        ctx.progress = 77
        time.sleep(0.3)  # a few polls: each would save the progress
        return "a's run"

    def in_b(ctx: TaskContext) -> str:
        ctx.progress = 5
        b_started.set()
        assert b_go.wait(WAIT)
        return "b's run"

    a = TaskManager(db_path, poll_interval=0.05, node_timeout=3600)  # no heartbeat in this test's time
    a.register("job", in_a)
    with a:
        tid = a.submit("job")
        runner = rooms(a).runner
        _until(lambda: runner.is_running(tid))
        sql(db_path, "DELETE FROM taskmgr_node WHERE node = ?", (a.node,))  # what a node that found it dead does
        b = TaskManager(db_path, poll_interval=0.05)
        b.register("job", in_b)
        with b:
            assert b_started.wait(WAIT)  # b took the task over and runs it again
            _until(lambda: b.get(tid).progress == 5)
            a_go.set()  # a wakes up: its progress, then its outcome
            _until(lambda: not runner.is_running(tid))  # a's outcome went through its commit
            task = b.get(tid)
            assert (task.status, task.progress, task.result) == (S.RUNNING, 5, None)
            assert task_column(db_path, tid, "owner") == b.node
            b_go.set()
            done = b.wait(tid, WAIT)
    assert (done.status, done.result_value, done.retries) == (S.SUCCESS, "b's run", 1)
    assert f"task {tid}" in caplog.text and "dropped" in caplog.text


def _until(cond) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_restore_leaves_alone_a_node_that_registered_after_it_began(db_path: str, monkeypatch) -> None:
    """C read which nodes were alive when its restore began (over a big backlog, a restore takes
    many batches); B registered after that, and runs a task of its own. C's restore used to take
    that task over as a dead node's: the task ran twice and B's outcome was dropped (found by
    review). Who is registered is now read by each batch, in its transaction."""
    runs: list[int] = []
    go = threading.Event()

    def job(ctx: TaskContext) -> str:
        runs.append(ctx.task_id)
        assert go.wait(WAIT)
        return "done"

    c = TaskManager(db_path, poll_interval=0.05)
    c.register("job", job)
    reaped, resume = threading.Event(), threading.Event()
    store = rooms(c).store
    real_reap = store.reap_nodes

    def slow_reap(*args, **kwargs):  # type: ignore[no-untyped-def]  # C has read the node table, then is slow
        out = real_reap(*args, **kwargs)
        reaped.set()
        assert resume.wait(WAIT)
        return out

    monkeypatch.setattr(store, "reap_nodes", slow_reap)
    starting = threading.Thread(target=c.start)
    starting.start()
    b = TaskManager(db_path, poll_interval=0.05)
    b.register("job", job)
    try:
        assert reaped.wait(WAIT)
        b.start()
        tid = b.submit("job")
        _until(lambda: rooms(b).runner.is_running(tid))
        resume.set()
        starting.join(WAIT)
        assert task_column(db_path, tid, "owner") == b.node
        go.set()
        done = b.wait(tid, WAIT)
        assert (done.status, done.retries, runs) == (S.SUCCESS, 0, [tid])
    finally:
        resume.set()
        go.set()
        starting.join(WAIT)
        b.shutdown()
        c.shutdown()


def test_a_node_that_claims_back_a_task_it_still_runs_does_not_run_it_twice(db_path: str, caplog) -> None:
    """Node x was taken for dead while its callable ran; node a took the task over and handed it
    back at its shutdown; x, alive after all, claims it again. A second run on x would write as x,
    passing the owner fence: the first run's outcome landed on the second run, whose own was then
    dropped (found by review). x now runs a task once at a time; the first run's outcome counts."""
    runs: list[int] = []
    go = threading.Event()

    def job(ctx: TaskContext) -> str:
        runs.append(ctx.task_id)
        assert go.wait(WAIT)
        return f"run {len(runs)}"

    x = TaskManager(db_path, poll_interval=0.05, node_timeout=3600, workers=2)  # no heartbeat in the test's time
    x.register("job", job)
    with x:
        tid = x.submit("job")
        _until(lambda: runs == [tid])
        sql(db_path, "DELETE FROM taskmgr_node WHERE node = ?", (x.node,))  # what a node that found x dead does
        a = TaskManager(db_path, executor=StepExecutor())
        a.register("job", job)
        a.start()  # takes the task over (x is not registered) ...
        assert task_column(db_path, tid, "owner") == a.node
        a.shutdown()  # ... and hands it back: RESTORING, nobody's, for x's next poll to claim
        _until(lambda: "already running on this node" in caplog.text)
        assert x.get(tid).status is S.RUNNING
        go.set()
        done = x.wait(tid, WAIT)
    assert (done.status, done.result_value, runs) == (S.SUCCESS, "run 1", [tid])


def test_a_node_leaves_alone_the_unowned_tasks_of_types_it_does_not_register(db_path: str) -> None:
    """An idle client's tasks of node b's type, NEW or delayed (PENDING), belong to no node until
    b claims them. Node a, which does not know the type, used to restore them at its start (or
    wake the delayed one) and mark them UNKNOWN, where b never looked (found by review)."""
    b = TaskManager(db_path, poll_interval=3600)  # claims and wake-ups by hand below
    b.register("b", lambda ctx: "b")
    client = TaskManager(db_path)
    client.register("b", lambda ctx: "b")
    a = TaskManager(db_path, poll_interval=3600)
    a.register("a", lambda ctx: "a")
    b.start()
    try:
        new = client.submit("b")
        delayed = client.submit("b", delay=0.001)
        time.sleep(0.01)  # the delay is over
        a.start()  # its restore
        rooms(a).node.wake_due()  # and its wake-up of due PENDING tasks
        assert (client.get(new).status, client.get(delayed).status) == (S.NEW, S.PENDING)
        rooms(b).node.claim()
        rooms(b).node.wake_due()
        assert [t.status for t in b.wait_many([new, delayed], WAIT)] == [S.SUCCESS, S.SUCCESS]
    finally:
        a.shutdown()
        b.shutdown()


def test_a_node_heartbeats_while_a_long_restore_runs(db_path: str, gates: Gates, monkeypatch) -> None:
    """start() restores before its poll begins: a restore over a big backlog that outlasted
    node_timeout left the node silent that long, to be taken for dead during its own start
    (found by review). It now heartbeats between batches."""
    ids = _leave_behind(db_path, gates, [S.QUEUED] * 2500)  # three batches of restore
    m = TaskManager(db_path, poll_interval=3600, node_timeout=0.3)  # a heartbeat due every 0.1 s
    register_test_types(m, gates)
    beats: list[float] = []
    store = rooms(m).store
    real_beat, real_batch = store.heartbeat, moves.take_over

    def beat(node: str) -> bool:
        beats.append(time.monotonic())
        return real_beat(node)

    def slow_batch(tx, *args):  # type: ignore[no-untyped-def]  # one take-over transaction
        time.sleep(0.15)  # a batch slower than the heartbeat's interval
        return real_batch(tx, *args)

    monkeypatch.setattr(store, "heartbeat", beat)
    monkeypatch.setattr(moves, "take_over", slow_batch)
    began = time.monotonic()
    m.start()
    try:
        took = time.monotonic() - began
        assert len(beats) >= 2, f"{len(beats)} heartbeat(s) in a restore of {took:.2f} s"
        assert [t.status for t in m.wait_many(ids, WAIT)] == [S.SUCCESS] * len(ids)
    finally:
        m.shutdown()


def test_a_due_task_of_a_type_the_taker_does_not_run_is_left_for_the_next_node_that_knows_it(db_path: str,
                                                                                           gates: Gates) -> None:
    """A dead node's delayed task of type 'echo' is taken over by node a, which does not know the
    type; when it fell due, a marked it UNKNOWN, and it stayed owned by a, so while a lived no node
    that starts knowing the type restored it (found by review). It is now left PENDING and
    nobody's, due as it was: a's wake-ups pass it by, and a node that runs the type wakes it."""
    (tid,) = _leave_behind(db_path, gates, [S.PENDING], run_at=1)  # long due
    a = TaskManager(db_path, poll_interval=0.05)
    a.register("other", lambda ctx: 0)
    with a:
        assert (a.get(tid).status, task_column(db_path, tid, "owner")) == (S.PENDING, None)
        rooms(a).node.wake_due()  # as a's polls do
        time.sleep(0.2)  # and a few of them
        assert (a.get(tid).status, task_column(db_path, tid, "owner"), task_column(db_path, tid, "run_at")) == (
            S.PENDING, None, 1)
        b = TaskManager(db_path, poll_interval=0.05)
        register_test_types(b, gates)
        with b:
            assert b.wait(tid, WAIT).status is S.SUCCESS


def test_max_restores_holds_for_a_task_left_for_another_node_on_the_way(db_path: str, gates: Gates) -> None:
    """A task interrupted while running, restored by a node that does not know its type, went
    UNKNOWN; that restore counted nothing, so a task that kills its process every time went round
    and round between nodes that knew its type and nodes that did not (found by review). Such a
    node now leaves it RESTORING and nobody's; the interruption counts however the task is restored."""
    (tid,) = _leave_behind(db_path, gates, [S.RUNNING])
    a = TaskManager(db_path, max_restores=1)
    a.register("other", lambda ctx: 0)
    with a:
        row = sql(db_path, "SELECT status, restores, retries, owner FROM taskmgr_task WHERE id = ?", (tid,))[0]
        assert row == ("restoring", 1, 1, None)
    sql(db_path, "UPDATE taskmgr_task SET status = 'running', owner = 'gone-host:2:dead', ran = 1 WHERE id = ?",
        (tid,))  # a node that knew the type claimed it, ran it, and crashed again
    b = TaskManager(db_path, max_restores=1)
    register_test_types(b, gates)
    with b:
        task = b.get(tid)
    assert task.status is S.FAILED and task.result.startswith("RestoreLimit:")
    assert tid not in gates.ran


def test_a_wake_up_retry_is_one_at_a_time_and_starts_over_once_nothing_is_held(db_path: str,
                                                                              monkeypatch) -> None:
    """The look again at due tasks held by another transaction (PostgreSQL; faked here: every due
    row reads as held): one pending at a time, its delay doubling while rows stay held, back to the
    least once a wake-up finds nothing held (also when it finds nothing due: the hold may end with
    the task suspended or cancelled elsewhere), and not stuck when it could not be scheduled
    (found by review)."""
    m = TaskManager(db_path, poll_interval=3600)
    m.register("t", lambda ctx: "ran")
    timed: list[tuple[float, object]] = []
    real_wake = moves.wake
    monkeypatch.setattr(moves, "wake", lambda tx, actor, ids, now: ([], True))  # each due row held elsewhere
    with m:
        node, executor = rooms(m).node, rooms(m).executor
        monkeypatch.setattr(executor, "call_at", lambda when, fn: timed.append((when, fn)))

        def due_task() -> int:
            tid = m.submit("t", delay=0.001)
            timed.clear()  # the submit's own timed wake-up
            time.sleep(0.01)  # due
            return tid

        tid = due_task()
        node.wake_due()
        node.wake_due()  # a poll that finds the row still held: no second retry
        assert len(timed) == 1 and node.wake_retry_delay == 2 * Node.WAKE_RETRY
        m.suspend(tid)  # the hold ends with the task suspended: nothing due any more
        timed.pop()[1]()  # the retry
        assert timed == [] and node.wake_retry_delay == Node.WAKE_RETRY

        def refuse(when: float, fn: object) -> None:
            raise RuntimeError("no timed calls now")

        due_task()
        monkeypatch.setattr(executor, "call_at", refuse)
        with pytest.raises(RuntimeError):
            node.wake_due()
        monkeypatch.setattr(executor, "call_at", lambda when, fn: timed.append((when, fn)))
        node.wake_due()
        assert len(timed) == 1
        monkeypatch.setattr(moves, "wake", real_wake)  # the other transaction ends
        timed.pop()[1]()
        assert timed == [] and node.wake_retry_delay == Node.WAKE_RETRY
