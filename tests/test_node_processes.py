"""The node model with real processes: forks, PID namespaces, mixed leases, skewed clocks,
nodes that run different types, and take-overs that fail part-way.

The invariant every test checks: no task runs twice while its first run is alive, and every
acknowledged task is run by a node that registers its type.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from conftest import WAIT
from taskmgr import StoreError, TaskManager, TaskStatus

S = TaskStatus
HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.slow


class Child:
    """A node process (tests/nodechild.py) and the file its runs are logged to."""

    def __init__(self, db: str, runlog: str, types: str, node_timeout: float = 30.0, skew: float = 0.0,
                 submit: str = "-", prefix: tuple[str, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, os.path.join(HERE, "nodechild.py"), db, runlog, types, str(node_timeout),
             str(skew), submit],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE)
        ready = self.proc.stdout.readline().split()  # type: ignore[union-attr]
        assert ready and ready[0] == "ready", f"the child node did not start: {ready}"
        self.node, self.pid = ready[1], int(ready[2])
        self.ids = [int(x) for x in self.proc.stdout.readline().split()]  # type: ignore[union-attr]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def stop(self) -> None:
        """Close its input: it shuts down (its runs must have been released)."""
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(WAIT)
        self.proc.stdout.close()  # type: ignore[union-attr]


def _runs(runlog: str) -> list[tuple[int, int]]:
    if not os.path.exists(runlog):
        return []
    with open(runlog) as f:
        return [(int(a), int(b)) for a, b in (line.split() for line in f if line.strip())]


def _until(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def runlog(tmp_path) -> Iterator[str]:
    path = str(tmp_path / "runs.log")
    yield path
    open(path + ".release", "w").close()  # whatever still runs may end


def _release(runlog: str) -> None:
    open(runlog + ".release", "w").close()


# ------------------------------------------------------------------ forks
def _child_submits(mgr: TaskManager, out) -> None:
    try:
        tid = mgr.submit("echo", 7)
        out.send((mgr.running, mgr.state, tid, mgr.get(tid).status.name, mgr.node))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out.send(repr(exc))


def test_a_process_forked_from_a_node_is_an_idle_manager_and_its_tasks_run_on_a_node(db_path: str) -> None:
    mgr = TaskManager(db_path, poll_interval=0.05)
    mgr.register("echo", lambda ctx: ctx.input)
    with mgr:
        for start in ("os.fork", "multiprocessing"):
            parent_end, child_end = multiprocessing.Pipe()
            if start == "os.fork":
                pid = os.fork()
                if pid == 0:  # the child: report, then leave without any exit hook
                    _child_submits(mgr, child_end)
                    os._exit(0)
                os.waitpid(pid, 0)
            else:
                proc = multiprocessing.get_context("fork").Process(target=_child_submits, args=(mgr, child_end))
                proc.start()
                proc.join(WAIT)
                assert proc.exitcode == 0
            answer = parent_end.recv()
            assert isinstance(answer, tuple), answer
            running, state, tid, status, node = answer
            # the child never acts as its parent's node: idle, its task written for any node to claim
            assert (running, state, status) == (False, "idle", "NEW"), answer
            assert node != mgr.node
            done = mgr.wait(tid, WAIT)
            assert done.status is S.SUCCESS and done.result == "7"
        assert mgr.running


def test_a_forked_child_can_start_a_node_of_its_own(db_path: str) -> None:
    mgr = TaskManager(db_path, poll_interval=0.05)
    mgr.register("echo", lambda ctx: ctx.input)
    with mgr:
        parent_end, child_end = multiprocessing.Pipe()

        def child() -> None:
            with mgr:  # starts the child's own node
                tid = mgr.submit("echo", "child")
                child_end.send((mgr.wait(tid, WAIT).status.name, mgr.node))

        proc = multiprocessing.get_context("fork").Process(target=child)
        proc.start()
        proc.join(WAIT)
        status, node = parent_end.recv()
        assert proc.exitcode == 0 and status == "SUCCESS" and node != mgr.node
        assert mgr.submit("echo", 1) and mgr.running


# ------------------------------------------------------------------ PID namespaces
def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0


def test_a_node_in_another_pid_namespace_is_never_taken_for_dead_by_its_pid(db_path: str, runlog: str) -> None:
    """Containers sharing a host (or hosts named alike): the same hostname, pids of another
    namespace. Its pid means nothing here; only its lease can say it is dead."""
    if not _unshare_works():
        pytest.skip("unshare --pid needs CAP_SYS_ADMIN (root); not available here")
    # a few hundred short-lived processes first, so the node's pid in its namespace is one that
    # (very likely) does not exist here: the pid check would have called it dead at once
    spawn = "i=0; while [ $i -lt 400 ]; do true & i=$((i+1)); done; wait; exec \"$@\""
    child = Child(db_path, runlog, "gate", submit="gate:2",
                  prefix=("unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", spawn, "sh"))
    try:
        _until(lambda: len(_runs(runlog)) == 2, "the namespaced node to start its two tasks")
        exists_here = os.path.exists(f"/proc/{child.pid}")
        other = TaskManager(db_path, poll_interval=0.05, node_timeout=0.3)
        other.register("gate", lambda ctx: ctx.task_id)
        with other:
            time.sleep(1.0)  # many heartbeats and take-over checks of the other node
            for tid in child.ids:
                task = other.get(tid)
                assert task.status is S.RUNNING and task.retries == 0, (task, exists_here)
        assert sorted(t for t, _ in _runs(runlog)) == sorted(child.ids)  # each ran once, in the child
        _release(runlog)
        reader = TaskManager(db_path)
        _until(lambda: all(reader.get(t).status is S.SUCCESS for t in child.ids), "the child to finish")
        reader.shutdown()
    finally:
        child.kill()


# ------------------------------------------------------------------ leases and clocks
@pytest.mark.parametrize("skew", [0.0, 3600.0, -3600.0])
def test_a_node_with_a_shorter_lease_or_a_skewed_clock_leaves_a_live_nodes_tasks_alone(
        db_path: str, runlog: str, skew: float) -> None:
    """Each node is judged by its own lease and the database's clock, never by the judge's."""
    child = Child(db_path, runlog, "gate", node_timeout=30.0, submit="gate:2")
    try:
        _until(lambda: len(_runs(runlog)) == 2, "the child to start its tasks")
        other = TaskManager(db_path, poll_interval=0.05, node_timeout=0.2, clock=lambda: time.time() + skew)
        other.register("gate", lambda ctx: ctx.task_id)
        with other:
            time.sleep(1.0)  # five of its own leases: it heartbeats and looks for dead nodes all along
            assert [other.get(t).status for t in child.ids] == [S.RUNNING, S.RUNNING]
            assert [other.get(t).retries for t in child.ids] == [0, 0]
        _release(runlog)
        reader = TaskManager(db_path)
        _until(lambda: all(reader.get(t).status is S.SUCCESS for t in child.ids), "the child to finish")
        reader.shutdown()
        assert sorted(t for t, _ in _runs(runlog)) == sorted(child.ids)
    finally:
        child.kill()


def test_a_node_whose_lease_ran_out_is_taken_over_by_its_own_lease(db_path: str, runlog: str) -> None:
    """The other side of the lease: a killed node with a short lease is taken over by a node
    with a long one, within its lease plus a poll or two."""
    child = Child(db_path, runlog, "gate", node_timeout=0.5, submit="gate:1")
    _until(lambda: len(_runs(runlog)) == 1, "the child to start its task")
    other = TaskManager(db_path, poll_interval=0.05, node_timeout=60.0)
    other.register("gate", lambda ctx: ctx.task_id)
    with other:
        child.kill()
        (tid,) = child.ids
        done = other.wait(tid, WAIT)
        assert done.status is S.SUCCESS and done.retries == 1


# ------------------------------------------------------------------ types
def test_a_take_over_leaves_the_types_it_cannot_run_for_a_node_that_can(db_path: str, runlog: str) -> None:
    """The node that finds a dead one registers only some of its types: the rest are left
    unowned and runnable (never UNKNOWN), and a node that registers them runs them."""
    child = Child(db_path, runlog, "a,b", node_timeout=0.5, submit="a:3")
    _until(lambda: len(_runs(runlog)) == 3, "the child to start its tasks")
    client = TaskManager(db_path)  # idle: its tasks are unowned NEW, for a node that runs "b"
    client.register("b", lambda ctx: None)
    extra = client.submit_many("b", [1, 2])
    client.shutdown()
    child.kill()
    finder = TaskManager(db_path, poll_interval=0.05, node_timeout=30.0)
    finder.register("b", lambda ctx: "b ran")
    with finder:
        for tid in extra:
            assert finder.wait(tid, WAIT).status is S.SUCCESS
        _until(lambda: all(finder.get(t).status is S.RESTORING for t in child.ids),
               "the finder to hand back the tasks it cannot run")
        for tid in child.ids:
            task = finder.get(tid)
            assert task.status is S.RESTORING and task.retries == 1, task
        time.sleep(0.3)  # several polls: the finder does not touch them again, nor mark them UNKNOWN
        assert all(finder.get(t).status is S.RESTORING for t in child.ids)
        runner = TaskManager(db_path, poll_interval=0.05)
        runner.register("a", lambda ctx: "a ran")
        with runner:
            for tid in child.ids:
                task = runner.wait(tid, WAIT)
                assert task.status is S.SUCCESS and task.result == '"a ran"' and task.retries == 1


def test_a_take_over_that_fails_part_way_is_finished_by_the_next_heartbeat(db_path: str, runlog: str) -> None:
    """A locked store stops the take-over in the middle: the dead node's tasks must not wait
    for a restart; the next heartbeat that can write goes on."""
    child = Child(db_path, runlog, "gate", node_timeout=0.3, submit="gate:2")
    _until(lambda: len(_runs(runlog)) == 2, "the child to start its tasks")
    finder = TaskManager(db_path, poll_interval=0.05, node_timeout=0.6, busy_timeout=0.05)
    finder.register("gate", lambda ctx: ctx.task_id)
    with finder:
        lock = sqlite3.connect(db_path, isolation_level=None, timeout=5)
        child.kill()
        lock.execute("BEGIN IMMEDIATE")  # a backup, a sqlite3 shell: the write lock held a while
        try:
            time.sleep(1.0)  # the child's lease runs out meanwhile; the finder's take-over fails
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        for tid in child.ids:
            done = finder.wait(tid, WAIT)
            assert done.status is S.SUCCESS and done.retries == 1


def test_a_take_over_whose_write_fails_is_tried_again_by_the_next_heartbeat(db_path: str, runlog: str,
                                                                          monkeypatch) -> None:
    """The dead node is already out of the registry when the take-over's write fails (a full
    disk): nothing would ever look for its tasks again but a restart. The next heartbeat does."""
    from taskmgr import _moves

    child = Child(db_path, runlog, "gate", node_timeout=0.3, submit="gate:2")
    _until(lambda: len(_runs(runlog)) == 2, "the child to start its tasks")
    real = _moves.take_over
    failures: list[int] = []

    def fails_once(tx, actor, ids):
        if not failures:
            failures.append(len(ids))
            raise StoreError("the task database is full: nothing was written")
        return real(tx, actor, ids)

    finder = TaskManager(db_path, poll_interval=0.05, node_timeout=30.0)
    finder.register("gate", lambda ctx: ctx.task_id)
    with finder:
        monkeypatch.setattr(_moves, "take_over", fails_once)
        child.kill()
        for tid in child.ids:
            done = finder.wait(tid, WAIT)
            assert done.status is S.SUCCESS and done.retries == 1
    assert failures == [2]


def test_a_shutdown_without_wait_leaves_its_running_tasks_to_be_taken_over_by_the_next_node_to_look(
        db_path: str) -> None:
    """shutdown(wait=False) abandons the running callables as a crash would: the node stays
    registered with its lease ended, so a live node takes the tasks over (no restart needed)."""
    import threading

    gate, started = threading.Event(), threading.Event()

    def held(ctx) -> None:
        started.set()
        gate.wait(WAIT)

    first = TaskManager(db_path, poll_interval=0.05, node_timeout=0.4)
    first.register("held", held)
    first.start()
    tid = first.submit("held")
    # the callable itself, not the row: a task committed RUNNING may not have started yet, and a
    # shutdown then hands it back as never run (no retry counted)
    assert started.wait(WAIT)
    first.shutdown(wait=False)
    gate.set()  # its first run ends; its outcome cannot be written any more
    second = TaskManager(db_path, poll_interval=0.05)
    second.register("held", lambda ctx: "again")
    with second:
        done = second.wait(tid, WAIT)
    assert done.status is S.SUCCESS and done.result == '"again"' and done.retries == 1
