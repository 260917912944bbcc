"""A hypothesis state machine driving a real manager against a model.

The manager runs on a :class:`~taskmgr.testing.StepExecutor`, so nothing runs
until the machine says so, and each task's callable waits for the machine's
decision (complete, fail, or notice a cancel). The model therefore knows every
task's status exactly, and after every step the machine checks that the store
agrees, that no task is lost, that the recorded history is a chain of moves the
table allows, and that ``task_retries`` counts re-runs.

"restart" simulates a crash: the manager is abandoned without waiting for its
running callables (their outcomes can no longer be written, as if the process
had died), and a new manager on the same file restores the tasks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from taskmgr import (
    CannotCancel,
    IncompleteTask,
    InvalidTransition,
    TaskCancelled,
    TaskContext,
    TaskManager,
    TaskNotFound,
    TaskStatus,
)
from taskmgr.testing import StepExecutor, check_history

S = TaskStatus
WAIT = 10.0
NOT_STARTED = {S.NEW, S.QUEUED, S.PENDING, S.RESTORING}


@dataclass
class Model:
    status: TaskStatus
    cooperative: bool
    retries: int = 0


class Run:
    """One run of one task's callable: how the machine talks to it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.poke = threading.Event()
        self.decision: str | None = None


class TaskManagerMachine(RuleBasedStateMachine):
    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="taskmgr-sm-")
        self.path = f"{self._dir.name}/tasks.db"
        self.model: dict[int, Model] = {}
        self.deleted: set[int] = set()
        self.queue: list[int] = []  # dispatch order of the jobs waiting in the executor
        self.runs: dict[tuple[int, int], Run] = {}  # (generation, task id) -> its run
        self.abandoned: list[Run] = []
        self.generation = 0
        self._open()

    # ------------------------------------------------------------- plumbing
    def _open(self) -> None:
        self.generation += 1
        gen = self.generation
        self.executor = StepExecutor()
        self.mgr = TaskManager(self.database(), executor=self.executor, max_restores=1000)

        def ctl(ctx: TaskContext) -> int:
            run = self.runs.setdefault((gen, ctx.task_id), Run())
            run.started.set()
            while True:
                assert run.poke.wait(WAIT), "the machine never decided"
                run.poke.clear()
                if run.decision == "ok":
                    return ctx.task_id
                if run.decision == "fail":
                    raise ValueError("told to fail")
                if ctx.cancelled and ctx.input["cooperative"]:
                    raise TaskCancelled("noticed")

        self.mgr.register("ctl", ctl)
        self.mgr.start()

    def database(self) -> object:
        """What each manager of the machine opens: a SQLite file here; subclasses use other stores."""
        from peewee import SqliteDatabase

        return SqliteDatabase(self.path, pragmas={"journal_mode": "wal", "synchronous": "off"}, timeout=5)

    def _run(self, tid: int) -> Run:
        return self.runs.setdefault((self.generation, tid), Run())

    def teardown(self) -> None:
        for run in list(self.runs.values()) + self.abandoned:
            run.decision = "ok"
            run.poke.set()
        self.mgr.shutdown(wait=True)
        self._dir.cleanup()

    def _finish(self, tid: int, decision: str) -> None:
        run = self._run(tid)
        run.decision = decision
        run.poke.set()

    # ---------------------------------------------------------------- rules
    @rule(target=tasks, cooperative=st.booleans())
    def submit(self, cooperative: bool) -> int:
        tid = self.mgr.submit("ctl", {"cooperative": cooperative})
        self.model[tid] = Model(S.QUEUED, cooperative)
        self.queue.append(tid)
        return tid

    @precondition(lambda self: self.queue)
    @rule()
    def start_next(self) -> None:
        tid = self.queue.pop(0)
        thread = self.executor.run_next()
        if tid in self.model and self.model[tid].status is S.QUEUED:
            assert self._run(tid).started.wait(WAIT), f"task {tid} did not start"
            self.model[tid].status = S.RUNNING
        else:  # cancelled, suspended or deleted while queued: its job must skip it
            thread.join(WAIT)
            assert not thread.is_alive()

    @rule(tid=tasks, ok=st.booleans())
    def complete(self, tid: int, ok: bool) -> None:
        m = self.model.get(tid)
        if m is None or m.status not in (S.RUNNING, S.CANCELLING):
            return
        self._finish(tid, "ok" if ok else "fail")
        task = self.mgr.wait(tid, WAIT)
        m.status = S.SUCCESS if ok else S.FAILED
        assert task.status is m.status

    @rule(tid=tasks)
    def cancel(self, tid: int) -> None:
        m = self.model.get(tid)
        if m is None:
            with pytest.raises(TaskNotFound):
                self.mgr.cancel(tid)
        elif m.status in NOT_STARTED:
            assert self.mgr.cancel(tid) is True
            m.status = S.CANCELLED
        elif m.status is S.RUNNING:
            assert self.mgr.cancel(tid) is True
            m.status = S.CANCELLING
            if m.cooperative:
                self._run(tid).poke.set()
                assert self.mgr.wait(tid, WAIT).status is S.CANCELLED
                m.status = S.CANCELLED
        else:
            with pytest.raises(CannotCancel):
                self.mgr.cancel(tid)

    @rule(tid=consumes(tasks), force=st.booleans())
    def delete(self, tid: int, force: bool) -> None:
        m = self.model.get(tid)
        if m is None:
            with pytest.raises(TaskNotFound):
                self.mgr.delete(tid, force=force)
        elif m.status.terminal or force:
            assert self.mgr.delete(tid, force=force) is m.status
            del self.model[tid]
            self.deleted.add(tid)
        else:
            with pytest.raises(IncompleteTask):
                self.mgr.delete(tid)

    @rule(tid=tasks)
    def suspend(self, tid: int) -> None:
        m = self.model.get(tid)
        if m is None:
            return
        if m.status in (S.NEW, S.QUEUED, S.RESTORING, S.PENDING):
            self.mgr.suspend(tid)
            m.status = S.PENDING
        else:
            with pytest.raises(InvalidTransition):
                self.mgr.suspend(tid)

    @rule(tid=tasks)
    def resume(self, tid: int) -> None:
        m = self.model.get(tid)
        if m is None:
            return
        if m.status is S.PENDING:
            self.mgr.resume(tid)
            m.status = S.QUEUED
            self.queue.append(tid)
        else:
            with pytest.raises(InvalidTransition):
                self.mgr.resume(tid)

    @rule()
    def restart(self) -> None:
        """A crash: running callables are abandoned; a new manager restores the tasks."""
        running = [run for (gen, _), run in self.runs.items() if gen == self.generation and run.started.is_set()]
        self.mgr.shutdown(wait=False)
        self._open()
        self.queue = []
        for tid in sorted(self.model):
            m = self.model[tid]
            if m.status is S.RUNNING:
                m.status, m.retries = S.QUEUED, m.retries + 1
            elif m.status is S.CANCELLING:
                m.status = S.CANCELLED
            if m.status is S.QUEUED:
                self.queue.append(tid)
        # the old process's callables now end; nothing they report may reach the store
        for run in running:
            run.decision = "ok"
            run.poke.set()
        self.abandoned += running

    # ----------------------------------------------------------- invariants
    @invariant()
    def every_task_is_where_the_model_says(self) -> None:
        stored = {t.id: t for t in self.mgr.list(limit=-1)}
        assert set(stored) == set(self.model), "a task was lost or came back"
        for tid, m in self.model.items():
            assert stored[tid].status is m.status, (tid, stored[tid].status, m.status)
            assert stored[tid].retries == m.retries, (tid, stored[tid].retries, m.retries)

    @invariant()
    def the_history_is_a_chain_of_allowed_moves(self) -> None:
        last = check_history(self.mgr.history())
        assert set(last) == set(self.model)
        for tid, m in self.model.items():
            assert last[tid] is m.status


TaskManagerMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_manager_state_machine = pytest.mark.slow(TaskManagerMachine.TestCase)
