"""Getting a task to a worker.

Owns: how a task the node may run reaches an executor worker. There are
three ways, and only three:

* *handed over*: a submit that found a worker free reserved it and wrote the
  task straight to RUNNING; once committed, the task goes to that worker
  (:meth:`Dispatcher.hand_over`, through :meth:`~taskmgr.store.Store.defer`,
  so the worker's Python runs while the next commit waits for the disk);
* *tried later*: a task written QUEUED for want of a free worker is tried by
  each of the next ``start_tries`` commits, in their own transactions, as a
  submit would, and then takes its place in line (:meth:`start_later`);
* *queued*: the executor's FIFO; the worker that takes it moves it QUEUED ->
  RUNNING itself before running it (:meth:`dispatch`).

Threads: a submitting caller, the thread leading a commit (the tries'
callbacks), and the housekeeping poll (:meth:`redispatch`). ``_later_lock``
guards the tasks being tried.

Invariants: a task is started only by a compare-and-set from QUEUED (so a task
cancelled, suspended or deleted meanwhile never starts); tries never put a
task behind one submitted after it; a reservation is taken once per task and
always given back or used.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from . import _moves as moves
from ._runner import Runner
from .errors import StoreError
from .executor import Executor
from .store import Store, Tx

log = logging.getLogger(__name__)


class Dispatcher:
    """Hands this node's tasks to its executor's workers."""

    def __init__(self, store: Store, executor: Executor, runner: Runner, node: str,
                 stopping: Callable[[], bool], start_tries: Callable[[], int]) -> None:
        self._store = store
        self._executor = executor
        self._runner = runner
        self._node = node
        self._stopping = stopping
        self._start_tries = start_tries
        #: tasks a coming commit tries to start: whether each holds a reserved worker
        self._later: dict[int, bool] = {}
        self._later_lock = threading.Lock()
        #: queued tasks whose start could not be written (a full disk): dispatched again by the poll
        self._undispatched: set[int] = set()

    @property
    def trying(self) -> int:
        """How many tasks wait for a coming commit to start them."""
        return len(self._later)

    def reserve(self, n: int) -> int:
        """Hold up to ``n`` free workers for tasks a submit is about to write RUNNING."""
        return 0 if self._executor.synchronous else self._executor.reserve(n)

    def release(self, n: int) -> None:
        if n:
            self._executor.release(n)

    def after_submit(self, ids: list[int], rows: list[dict[str, Any]], direct: int) -> None:
        """Send a committed submit's tasks on their way: the first ``direct`` to their reserved
        workers, the rest tried by coming commits or queued."""
        rest = len(ids) - direct
        tries = self._start_tries()
        # tried only when all of them can be and none waits in line before them: a task never
        # starts after one submitted after it because it was being tried
        later = bool(rest and tries and not self._executor.synchronous and not self._executor.waiting
                     and len(self._later) + rest <= self._executor.workers)
        since = self._executor.mark() if later else 0
        for i, tid in enumerate(ids):
            row = rows[i]  # this call's own: completed in place, it is what the worker runs
            row["id"], row["retries"], row["progress"] = tid, 0, 0
            if i < direct:
                self.hand_over(tid, row)
            elif later:
                self._start_later(tid, row, 0, since)
            else:
                self.dispatch(tid)

    def hand_over(self, tid: int, row: dict[str, Any]) -> None:
        """Give a task committed RUNNING to the worker reserved for it, as the next commit waits for
        the disk (at once when no other write is coming)."""
        job = functools.partial(self._run_started, tid, row)
        self._store.defer(functools.partial(self._executor.submit, job, reserved=True))

    def dispatch(self, tid: int) -> None:
        """Queue a QUEUED task in the executor's FIFO."""
        self._executor.submit(functools.partial(self._run_queued, tid))

    def redispatch(self) -> None:
        """Queue again the tasks whose start could not be written."""
        while self._undispatched:
            self.dispatch(self._undispatched.pop())

    # ------------------------------------------------------------------ the jobs
    def _run_started(self, tid: int, row: dict[str, Any]) -> None:
        if not self._stopping():  # else left RUNNING, never started: the shutdown hands it back
            self._runner.run(tid, row)

    def _run_queued(self, tid: int) -> None:
        if self._stopping():
            return  # left QUEUED: the shutdown hands it back
        try:
            row = self._store.write(moves.start, self._node, tid, savepoint=False)
        except StoreError as exc:
            log.error("could not start task %d (%s); it stays QUEUED and is tried again at the next poll",
                      tid, exc)
            self._undispatched.add(tid)
            return
        if row is not None:  # else cancelled, suspended, deleted or taken over while queued
            self._runner.run(tid, row)

    # ------------------------------------------------------------------ tries
    def _start_later(self, tid: int, row: dict[str, Any], tries: int, since: int) -> None:
        with self._later_lock:
            self._later[tid] = False  # holds no reservation yet
        try:
            self._store.write_async(self._try_start, tid, savepoint=False,
                                    callback=functools.partial(self._tried, tid, row, tries + 1, since))
        except StoreError:  # the store is closing: to the FIFO (a shutdown hands it back)
            with self._later_lock:
                del self._later[tid]
            self._executor.submit_from(functools.partial(self._run_queued, tid), since)

    def _try_start(self, tx: Tx, tid: int) -> bool | None:
        """In a commit's transaction: QUEUED -> RUNNING if a worker is free now (True); False
        when the task is no longer queued; None when no worker is free. The reservation is taken
        once: a batch run again (a lock retry) does not take a second one."""
        if not self._later[tid]:
            if self._stopping() or not self._executor.reserve(1, ahead_of_queue=True):
                return None
            self._later[tid] = True
        return moves.start_queued(tx, self._node, tid)

    def _tried(self, tid: int, row: dict[str, Any], tries: int, since: int, ok: bool, value: Any) -> None:
        """After the commit that carried a try: hand the task over, try again, or put it in line."""
        with self._later_lock:
            reserved = self._later.pop(tid)
        if ok and value:
            self.hand_over(tid, row)
            return
        if reserved:
            self._executor.release(1)
        if ok and value is False:
            return  # cancelled, suspended or deleted meanwhile: nothing to start
        if ok and tries < self._start_tries() and not self._stopping() and not self._executor.waiting:
            self._start_later(tid, row, tries, since)
        else:  # tasks waiting in line came after this one: it goes ahead of them
            self._executor.submit_from(functools.partial(self._run_queued, tid), since)
