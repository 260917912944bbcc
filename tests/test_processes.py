"""Real processes: a SIGKILL while tasks run, a poison task, and a cancel from another process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from childjobs import setup
from conftest import WAIT, registered_nodes
from taskmgr import TaskManager, TaskStatus
from taskmgr.testing import check_history

S = TaskStatus
HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.slow


def _child(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "childjobs.py"), *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )


def _kill(child: subprocess.Popen) -> None:
    """SIGKILL the child (if it still runs), reap it and close its pipe."""
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.wait(WAIT)
    child.stdout.close()


def _until(predicate, what: str, timeout: float = WAIT) -> None:
    """Poll a condition that lives in another process (bounded; nothing here can be awaited)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_tasks_running_when_the_process_is_killed_are_restored_and_finish(db_path: str) -> None:
    child = _child("serve", db_path, "6")
    ids = [int(x) for x in child.stdout.readline().split()]
    assert len(ids) == 6
    observer = TaskManager(db_path)
    def two_running_with_progress() -> bool:
        running = observer.list(status="running")
        return len(running) == 2 and all(t.progress > 2 for t in running)

    _until(two_running_with_progress, "two tasks running with progress saved")
    _kill(child)
    before = {t.id: t for t in observer.list(limit=-1)}
    observer.shutdown()
    running = {i for i, t in before.items() if t.status is S.RUNNING}
    assert len(running) == 2
    assert {t.status for t in before.values()} == {S.RUNNING, S.QUEUED}

    mgr = TaskManager(db_path, workers=4, poll_interval=0.05)
    setup(mgr)
    with mgr:
        # let the restored tasks finish quickly: cancel them; the cooperative sleep wakes at once
        for tid in ids:
            task = mgr.get(tid)
            if not task.terminal:
                mgr.cancel(tid)
        after = {tid: mgr.wait(tid, WAIT) for tid in ids}
        check_history(mgr.history())
        for tid in ids:
            assert after[tid].status in (S.CANCELLED, S.SUCCESS)
            path = [m.to_status for m in mgr.history(tid)]
            if tid in running:
                assert after[tid].retries == 1
                assert path[:5] == [S.NEW, S.QUEUED, S.RUNNING, S.RESTORING, S.QUEUED]
            else:
                assert after[tid].retries == 0
                assert path[:4] == [S.NEW, S.QUEUED, S.RESTORING, S.QUEUED]


def test_a_task_that_kills_its_process_every_time_ends_failed(db_path: str) -> None:
    observer = TaskManager(db_path)

    def given_up() -> bool:
        tasks = observer.list(limit=-1)
        return bool(tasks) and tasks[0].terminal

    deaths = 0
    for _ in range(6):  # bounded: max_restores=2 means three deaths, then a start that gives up
        child = _child("poison", db_path)
        _until(lambda child=child: child.poll() is not None or given_up(), "the child to die or the task to be given up")
        if child.poll() is None:
            _kill(child)
            break
        assert child.returncode == -signal.SIGKILL
        child.stdout.close()
        deaths += 1
    (task,) = observer.list(limit=-1)
    observer.shutdown()
    assert deaths == 3
    assert task.status is S.FAILED
    assert task.result == (
        "RestoreLimit: the task was interrupted while running 3 times (its process died each time); "
        "gave up after max_restores=2"
    )
    assert task.retries == 2


def test_a_cancel_from_another_process_reaches_the_running_callable(db_path: str) -> None:
    mgr = TaskManager(db_path, poll_interval=0.05)
    setup(mgr)
    with mgr:
        tid = mgr.submit("wait_cancel")
        _until(lambda: mgr.get(tid).progress == 1, "the task to report progress")
        started = time.monotonic()
        subprocess.run(
            [sys.executable, os.path.join(HERE, "childjobs.py"), "cancel", db_path, str(tid)], check=True, cwd=HERE
        )
        task = mgr.wait(tid, WAIT)
        assert task.status is S.CANCELLED
        assert time.monotonic() - started < WAIT


def test_a_task_running_in_another_process_is_cancelled_from_here(db_path: str) -> None:
    child = _child("wait_cancel", db_path)
    tid = int(child.stdout.readline())
    here = TaskManager(db_path, poll_interval=0.05)
    try:
        _until(lambda: here.get(tid).status is S.RUNNING, "the child's task to run")
        here.cancel(tid)
        assert here.wait(tid, WAIT).status is S.CANCELLED
    finally:
        _kill(child)
        here.shutdown()


def test_a_live_node_takes_over_the_tasks_of_a_node_that_died(db_path: str) -> None:
    survivor = TaskManager(db_path, workers=4, poll_interval=0.05, node_timeout=0.3)
    setup(survivor)
    with survivor:
        child = _child("serve", db_path, "3")
        ids = [int(x) for x in child.stdout.readline().split()]
        _until(lambda: sum(survivor.get(i).status is S.RUNNING for i in ids) == 2, "the child to run two tasks")
        _kill(child)
        # no restart here: the survivor's heartbeat notices the dead node and restores its tasks
        def taken_over(tid: int) -> bool:
            moves = [m.to_status for m in survivor.history(tid)]
            return S.RESTORING in moves and moves[-1] is S.RUNNING

        _until(lambda: all(taken_over(i) for i in ids), "the survivor to run the dead node's tasks")
        assert sum(survivor.get(i).retries for i in ids) == 2  # the two the child was running
        for tid in ids:
            survivor.cancel(tid)
            assert survivor.wait(tid, WAIT).status is S.CANCELLED
        check_history(survivor.history())


def test_a_manager_left_running_is_shut_down_when_the_interpreter_exits(db_path: str) -> None:
    """A script that ends without shutdown(): its running callables finish and are recorded, its
    queued tasks are handed back for the next start, its node is deregistered, and nothing is
    printed but the warning that says so (it used to print APScheduler's traceback)."""
    child = subprocess.run([sys.executable, os.path.join(HERE, "childjobs.py"), "exit", db_path],
                           capture_output=True, text=True, cwd=HERE, timeout=WAIT)
    assert child.returncode == 0, child.stderr
    ids = [int(x) for x in child.stdout.split()]
    assert "Traceback" not in child.stderr, child.stderr
    assert "3 queued tasks handed back" in child.stderr, child.stderr
    observer = TaskManager(db_path)
    try:
        tasks = {t.id: t for t in observer.list(limit=-1)}
        assert sorted(tasks) == ids
        assert [tasks[i].status for i in ids] == [S.SUCCESS] * 2 + [S.RESTORING] * 3
        assert [tasks[i].result_value for i in ids[:2]] == [10, 10]
        assert registered_nodes(db_path) == []  # deregistered: nobody has to time it out
        for i in ids:
            check_history(observer.history(i))
    finally:
        observer.shutdown()
    rerun = TaskManager(db_path, workers=2)
    setup(rerun)
    with rerun:  # the next start claims and runs what was handed back
        assert all(rerun.wait(i, WAIT).status is S.SUCCESS for i in ids)


def test_a_forked_child_that_exits_leaves_its_parents_node_alone(db_path: str) -> None:
    """The exit hook is inherited by a fork: the child's exit must not shut down (hand back the
    tasks of, deregister) the node of its parent, which still runs them."""
    child = _child("fork", db_path)
    try:
        ids = [int(x) for x in child.stdout.readline().split()]
        assert len(ids) == 5
        observer = TaskManager(db_path)
        try:
            assert len(registered_nodes(db_path)) == 1
            tasks = observer.list(limit=-1)
            assert all(t.status in (S.QUEUED, S.RUNNING, S.SUCCESS) for t in tasks), tasks
            _until(lambda: all(observer.get(i).status is S.SUCCESS for i in ids), "the parent to run all five")
        finally:
            observer.shutdown()
    finally:
        _kill(child)


_STEP_SCRIPT = """
import sys, threading
from taskmgr import TaskManager
from taskmgr.testing import StepExecutor

ex = StepExecutor()
mgr = TaskManager(sys.argv[1], executor=ex)
gate = threading.Event()
mgr.register("held", lambda ctx: gate.wait())
mgr.start()
tid = mgr.submit("held")
ex.run_next()
raise AssertionError("a host's check fails while its test holds the task RUNNING")
"""


def test_a_script_holding_a_step_executors_task_still_exits(db_path: str) -> None:
    """The exit hook shuts down only nodes on the pool executor: a StepExecutor's threads are
    daemons, and joining one that a test holds would hang the exit for good."""
    child = subprocess.run([sys.executable, "-c", _STEP_SCRIPT, db_path], capture_output=True, text=True,
                           timeout=WAIT)
    assert child.returncode == 1 and "a host's check fails" in child.stderr


_INTERRUPTED_SCRIPT = """
import os, signal, sys, threading, time
from taskmgr import TaskManager
from taskmgr.testing import rooms

mgr = TaskManager(sys.argv[1], workers=2, poll_interval=0.05)
started = threading.Barrier(3)

@mgr.task("work")
def work(ctx):
    started.wait()
    ctx.sleep(0.5)
    return ctx.task_id

mgr.start()
mgr.submit_many("work", [None, None])
started.wait()
node = rooms(mgr).node
real, stopper = node.keep_alive, []
def keep_alive():  # the stopper's housekeeping while shutdown() waits for the callables
    if not stopper:
        stopper.append(threading.current_thread())
        time.sleep(0.1)  # the main thread is in shutdown()'s wait by now
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while shutdown() waits
    real()
node.keep_alive = keep_alive
try:
    mgr.shutdown()
except KeyboardInterrupt:
    print("interrupted", flush=True)
print("the stop goes on" if stopper[0].is_alive() else "the stop is abandoned", flush=True)
"""


def test_a_shutdown_interrupted_then_the_script_ending_still_records_every_outcome(db_path: str) -> None:
    """An interrupt used to cut the shutdown short: the callables' outcomes were lost, and the node
    left registered (found by review). The interrupt now ends only the wait for the stopper, which
    goes on, and the interpreter's exit waits for it (no daemon)."""
    child = subprocess.run([sys.executable, "-c", _INTERRUPTED_SCRIPT, db_path], capture_output=True, text=True,
                           timeout=WAIT)
    assert child.returncode == 0 and child.stdout.split("\n")[:2] == ["interrupted", "the stop goes on"], (
        child.stdout, child.stderr)
    observer = TaskManager(db_path)
    try:
        assert [(t.status, t.result_value) for t in observer.list()] == [(S.SUCCESS, 1), (S.SUCCESS, 2)]
        assert registered_nodes(db_path) == []
    finally:
        observer.shutdown()
