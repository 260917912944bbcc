"""TaskManager: the public face of the library, thin over the rooms behind it.

A manager is created *idle*: it submits, reads and controls tasks (a CLI or a
client process needs no more) and runs nothing. :meth:`TaskManager.start`
makes it a *node*: it registers with a lease, takes over what dead nodes
left, and runs tasks; :meth:`TaskManager.shutdown` stops it for good.

The rooms, each with one job (docs/design.rst tells the whole story):

* :mod:`taskmgr._codec`: JSON, error texts, argument checks, page tokens;
* :mod:`taskmgr._registry`: the task types;
* :mod:`taskmgr._moves`: every status decision, over a store transaction;
* :mod:`taskmgr._dispatch`: getting a task to a worker;
* :mod:`taskmgr._runner`: the run of one task and its outcome;
* :mod:`taskmgr._node`: lease, take-over, claims, wake-ups;
* :mod:`taskmgr._waiters`: ``wait`` and ``wait_many``;
* :mod:`taskmgr._lifecycle`: start, stop, the exit hook;
* :mod:`taskmgr.store` and :mod:`taskmgr.executor` below them.

Threads: the host's threads call in; executor workers run callables; the
executor's housekeeping poll runs the node's duties; the store's leader and
flusher commit; one stopper thread carries out a shutdown.

A process forked from a started manager (a pre-fork server, ``multiprocessing``
with fork) never acts as its parent's node: at its first call the child's
copy becomes an idle manager of its own, with a fresh store connection and a
node name of its own; it may ``start()`` to become a node in its own right.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar, overload
from typing import List as _List  # noqa: UP035 - TaskManager.list shadows list

from peewee import Database

from . import _moves as moves
from ._codec import (
    MAX_ID,
    check_count,
    check_id,
    check_name,
    check_retries,
    check_seconds,
    decode_page,
    encode_json,
    encode_page,
)
from ._dispatch import Dispatcher
from ._lifecycle import EXIT_STOPS, Lifecycle, State
from ._node import Node
from ._registry import TaskType, make_type
from ._runner import Runner
from ._waiters import Waiters
from .context import TaskContext
from .errors import InvalidArgument, LimitExceeded, ManagerStateError, StoreError, TaskNotFound, UnknownTaskType
from .executor import Executor, ExecutorBase, InlineExecutor, PoolExecutor
from .status import TaskStatus
from .store import Store, now_ms
from .task import Task, TaskPage, Transition

__all__ = ["TaskManager", "TaskType", "DEFAULT_GRAPH", "DEFAULT_GRAPHSPACE", "MAX_ID", "encode_page", "decode_page"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[[TaskContext], Any])
DEFAULT_GRAPHSPACE = "DEFAULT"
DEFAULT_GRAPH = "hugegraph"
MiB = 1024 * 1024
#: store objects a forked child stopped using: never closed there (their connections and threads
#: belong to the parent), kept from the garbage collector, which would close them
_ABANDONED: _List[Any] = []


class TaskManager:
    """Runs registered callables as tasks and keeps their records.

    :param database: a file path (SQLite, the embedded default) or a peewee
        :class:`~peewee.Database` (SQLite or a shared PostgreSQL).
    :param workers: threads that run task callables.
    :param executor: ``"pool"`` (APScheduler thread pool, the default),
        ``"inline"`` (runs each task on the submitting thread before
        :meth:`submit` returns: deterministic, for tests), or an
        :class:`~taskmgr.executor.ExecutorBase` subclass.
    :param synchronous: SQLite's durability for a path: ``"FULL"`` (default) or ``"NORMAL"``.
    :param busy_timeout: seconds to wait for another connection's write lock.
    :param history: record every status change (see :meth:`history`).
    :param max_input_size: largest ``task_input`` in bytes (16 MiB).
    :param max_result_size: largest ``task_result`` in bytes (16 MiB).
    :param poll_interval: seconds between housekeeping polls; bounds how long a
        cancel from another process takes to reach a running callable.
    :param max_restores: how many crash restores a running task gets before it is declared FAILED.
    :param node_timeout: this node's lease, in seconds: other nodes take its
        tasks over once it has not renewed it for that long (judged by the
        database's clock).
    :param clock: time source for task times, seconds since the epoch (tests pass a fake one).
    :param readonly: only read (an operator's listing): the file is opened read-only, nothing is
        created, migrated or changed, every write raises :class:`~taskmgr.errors.StoreError`, and
        :meth:`start` is refused.
    """

    #: how many of the commits after its submit try to start a task that found no worker free
    #: (see :mod:`taskmgr._dispatch`; 0: none do, a worker starts it)
    START_TRIES = 4

    def __init__(
        self,
        database: str | os.PathLike[str] | Database,
        *,
        workers: int = 4,
        executor: Literal["pool", "inline"] | Executor = "pool",
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        history: bool = True,
        max_input_size: int = 16 * MiB,
        max_result_size: int = 16 * MiB,
        poll_interval: float = 0.2,
        max_restores: int = 3,
        node_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
    ) -> None:
        self.max_input_size = check_count(max_input_size, "max_input_size", low=1, high=MAX_ID, unit="bytes")
        self.max_result_size = check_count(max_result_size, "max_result_size", low=1, high=MAX_ID, unit="bytes")
        self.max_restores = check_count(max_restores, "max_restores")
        self.poll_interval: float = check_seconds(poll_interval, "poll_interval", positive=True)  # type: ignore[assignment]
        self.node_timeout: float = check_seconds(node_timeout, "node_timeout", positive=True)  # type: ignore[assignment]
        check_seconds(busy_timeout, "busy_timeout", positive=True)
        if not callable(clock):
            raise InvalidArgument(f"clock must be a callable returning seconds since the epoch, got {clock!r}")
        self.clock = clock
        self._executor_choice = executor
        self._workers = workers
        self._executor = self._make_executor()
        self._types: dict[str, TaskType] = {}
        self._database = database
        self._store_options: dict[str, Any] = {"synchronous": synchronous, "busy_timeout": busy_timeout,
                                               "history": history, "readonly": bool(readonly)}
        self._store = self._open_store()
        self._left_unowned = 0  # tasks submitted during the shutdown, written unowned (for the exit warning)
        self._build_rooms()

    def _make_executor(self) -> Executor:
        choice = self._executor_choice
        if choice == "pool":
            return PoolExecutor(self._workers)
        if choice == "inline":
            return InlineExecutor()
        if not isinstance(choice, ExecutorBase):
            raise InvalidArgument(
                f"executor must be 'pool', 'inline' or an instance of a taskmgr.executor.ExecutorBase subclass "
                f"(it gives the optional methods their defaults), got {choice!r}")
        return choice

    def _open_store(self) -> Store:
        """The store, and the waiters its commits wake (one listener per store)."""
        store = Store(self._database, group_commit=not self._executor.synchronous, clock=self.clock,
                      **self._store_options)
        self._waiters = Waiters(store, self.poll_interval, self._require_open)
        store.add_listener(self._waiters.on_commit)
        return store

    def _build_rooms(self) -> None:
        """The rooms of one node's life over the store: a fresh node name, lifecycle, runner,
        dispatcher and duties (made anew after a failed start, and in a forked child)."""
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._lifecycle = Lifecycle(self._stop_steps)
        self._runner = Runner(self._store, self.node, self._types, max_result_size=self.max_result_size,
                              clock=self.clock, retry_due=self._wake_at)
        self._dispatcher = Dispatcher(self._store, self._executor, self._runner, self.node,
                                      self._lifecycle.stopping.is_set, lambda: self.START_TRIES)
        self._node = Node(self._store, self._executor, self._dispatcher, self._runner, name=self.node,
                          types=self._types.keys(), lease=self.node_timeout, poll_interval=self.poll_interval,
                          max_restores=self.max_restores, clock=self.clock)

    def _wake_at(self, when: float) -> None:
        self._node.wake_at(when)

    # ------------------------------------------------------------ registry
    def task(
        self, name: str, *, max_retries: int = 0, retry_delay: float = 1.0, http: bool = False
    ) -> Callable[[F], F]:
        """Decorator: register the function as the callable of task type ``name``.

        :param max_retries: re-runs after the callable raises (default 0).
        :param retry_delay: seconds before the first re-run; doubled each time.
        :param http: may be submitted over the REST API.
        """

        def decorate(fn: F) -> F:
            self.register(name, fn, max_retries=max_retries, retry_delay=retry_delay, http=http)
            return fn

        return decorate

    def register(self, name: str, fn: Callable[[TaskContext], Any], *, max_retries: int = 0,
                 retry_delay: float = 1.0, http: bool = False) -> TaskType:
        """Register ``fn`` as the callable of task type ``name`` (see :meth:`task`)."""
        return make_type(self._types, name, fn, max_retries=max_retries, retry_delay=retry_delay, http=http)

    @property
    def task_types(self) -> dict[str, TaskType]:
        """The registered task types by name (a copy)."""
        return dict(self._types)

    # ----------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`shutdown` (never in a forked copy of a node)."""
        return self._lifecycle.running and self._lifecycle.pid == os.getpid()

    @property
    def state(self) -> str:
        """``"idle"``, ``"running"``, ``"stopping"`` or ``"shut down"``."""
        self._own_process()
        return self._lifecycle.state.value

    def start(self) -> TaskManager:
        """Become a node: register a lease, take over what dead nodes left, then run tasks.
        Returns ``self``. A start that fails (the store cannot be written) leaves the manager
        idle, as it was."""
        self._own_process()
        if self._store.readonly:
            raise ManagerStateError("a read-only task manager cannot start: open it without readonly=True")
        self._lifecycle.start(self._begin, self._undo_start)
        return self

    def _begin(self) -> None:
        self._node.register()
        self._executor.start()
        try:
            self._node.restore()
        except StoreError:  # owed: the first heartbeat that can goes on with it
            log.exception("node %s could not finish taking over the tasks of stopped nodes; it goes on at its "
                          "next heartbeat", self.node)
        self._executor.every(self.poll_interval, self._tick)
        if isinstance(self._executor, PoolExecutor):
            # another executor's threads may be daemons (taskmgr.testing.StepExecutor's are): a
            # shutdown at exit would wait for them; such a node is left as a crash leaves one
            EXIT_STOPS[self._lifecycle] = self._stop_at_exit

    def _undo_start(self) -> None:
        """After a failed start: out of the registry, the executor stopped and made anew."""
        try:
            self._node.leave()
        except StoreError:
            log.warning("node %s could not leave the registry after a failed start; its lease runs out", self.node)
        self._executor.shutdown(wait=False)
        if isinstance(self._executor_choice, str):
            self._executor = self._make_executor()
        self._build_rooms()

    def _stop_at_exit(self) -> None:
        self._lifecycle.stop(True, False, True, may_wait=True)

    def shutdown(self, wait: bool = True, interrupt: bool = False) -> None:
        """Stop running tasks and close the store.

        Tasks this node had queued but not started are handed back (RESTORING,
        unowned) for any node to claim. With ``wait`` (the default) running
        callables finish and their outcome is recorded; with ``interrupt``
        they are first asked to stop (see :class:`~taskmgr.context.TaskContext`),
        and one that stops is handed back too. While they run the node keeps
        its lease, notices remote cancels and saves progress. Without ``wait``
        they are abandoned, as a crash abandons them: the node's lease ends at
        once, and the next node to look (a started one, within a poll) takes
        their tasks over.

        Every other call works until it returns. Called from a task's callable,
        on the thread leading a commit (a signal handler), or while another
        caller waits for the same shutdown, it returns at once and the
        shutdown goes on by itself; an interrupted wait (a second Ctrl-C)
        leaves it going, and calling it again waits for it.
        """
        if self._lifecycle.pid != os.getpid():
            self._own_process()
        may_wait = not (PoolExecutor.in_any_worker() or self._store.leading_here())
        self._lifecycle.stop(wait, interrupt, False, may_wait=may_wait)
        if may_wait and self._lifecycle.state is State.SHUT_DOWN:
            self._store.close()  # this thread's connection (the stopper closed its own)

    def _stop_steps(self, was_running: bool, wait: bool, interrupt: bool, at_exit: bool) -> None:
        """The stop, in order (see :mod:`taskmgr._lifecycle`), on the stopper thread."""
        failed: Exception | None = None
        if was_running:
            try:
                if interrupt:
                    self._runner.interrupt_all()
                if wait:
                    self._executor.close()
                    while not self._executor.join(self.poll_interval):
                        self._node.keep_alive()
                self._executor.shutdown(wait=wait)
            except Exception as exc:  # noqa: BLE001 - the node leaves and the store closes all the same
                failed = exc
            self._leave(at_exit, wait)
        self._store.close()
        self._waiters.wake_all()
        if failed is not None:
            raise failed

    def _leave(self, at_exit: bool, wait: bool) -> None:
        """Record what is left, hand back what the node is not running, leave the registry.
        Without ``wait`` (callables abandoned, as by a crash) the node's lease ends instead: the
        next node to look takes their tasks over."""
        try:
            self._runner.retry_unsaved()
            self._runner.flush_progress()
            handed_back = self._store.write(moves.release, self.node, self._runner.busy)
            if wait:
                self._node.leave()
            else:
                self._node.abandon()
        except StoreError:
            log.exception("could not record the shutdown of node %s", self.node)
            return
        if at_exit and (handed_back or self._left_unowned):
            log.warning("task manager node %s was still running at interpreter exit: shut down; %d queued "
                        "tasks handed back and %d submitted meanwhile left unowned, for the next start to "
                        "run (call shutdown() to choose when)", self.node, handed_back, self._left_unowned)

    def __enter__(self) -> TaskManager:
        if self._lifecycle.state is State.IDLE:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    def _require_open(self) -> None:
        self._own_process()
        self._lifecycle.require_open()

    def _own_process(self) -> None:
        """In a process forked from this one's: become an idle manager of the child's own."""
        if self._lifecycle.pid == os.getpid():
            return
        parent_node = self.node
        _ABANDONED.append(self._store)  # the parent's connections and threads: never touched here
        if isinstance(self._database, Database):
            # the forking thread's copy of the parent's connection, dropped unclosed (peewee keeps it
            # in the database's thread-local state)
            self._database._state.reset()  # type: ignore[attr-defined]
        if isinstance(self._executor_choice, str):
            self._executor = self._make_executor()
        self._store = self._open_store()
        self._build_rooms()
        log.info("forked from node %s: this process (%d) is an idle manager; start() makes it node %s",
                 parent_node, os.getpid(), self.node)

    def _tick(self) -> None:
        """The periodic poll: the node's duties, while it runs (a stop keeps it alive itself)."""
        if not self._lifecycle.stopping.is_set():
            self._node.tick()

    def run_due(self) -> None:
        """For executors driven by the test (inline, step): run one housekeeping poll and every
        timed call due by the manager's clock."""
        self._require_open()
        self._executor.run_due(self.clock())

    def restore(self) -> int:
        """Take over the tasks of dead nodes; returns how many it examined (``start()`` does it,
        and so does a heartbeat that finds a node dead)."""
        if not self.running:
            raise ManagerStateError("restore() needs a started manager: call start() first")
        return self._node.restore()

    # -------------------------------------------------------------- submit
    def submit(
        self,
        task_type: str,
        input: Any = None,
        *,
        name: str | None = None,
        graph: str = DEFAULT_GRAPH,
        graphspace: str = DEFAULT_GRAPHSPACE,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        delay: float | None = None,
    ) -> int:
        """Store a new task and return its id once it is durable.

        :param task_type: a registered type.
        :param input: any JSON-serialisable value; the callable gets it back as ``ctx.input``.
        :param name: a human-readable name (default: the type).
        :param delay: seconds to wait in PENDING before it may run.
        :raises UnknownTaskType: when ``task_type`` is not registered.
        :raises InvalidArgument: for non-JSON input and other bad values (nothing is stored).
        :raises LimitExceeded: when the input's JSON is over ``max_input_size``.
        """
        return self.submit_many(task_type, [input], name=name, graph=graph, graphspace=graphspace,
                                max_retries=max_retries, retry_delay=retry_delay, delay=delay)[0]

    def submit_many(
        self,
        task_type: str,
        inputs: Iterable[Any],
        *,
        name: str | None = None,
        graph: str = DEFAULT_GRAPH,
        graphspace: str = DEFAULT_GRAPHSPACE,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        delay: float | None = None,
    ) -> list[int]:
        """Store one task of ``task_type`` per input, in one transaction; return their ids in order.

        All or nothing: when one input is refused, no task is stored. The
        other parameters are those of :meth:`submit` and apply to every task.
        """
        self._require_open()
        spec = self._spec(task_type)
        name = spec.name if name is None else check_name(name, "task name")
        if graph is not DEFAULT_GRAPH:
            check_name(graph, "graph")
        if graphspace is not DEFAULT_GRAPHSPACE:
            check_name(graphspace, "graphspace")
        retries, backoff = spec.max_retries, spec.retry_delay
        if max_retries is not None or retry_delay is not None:  # the type's own were checked by register()
            retries, backoff = check_retries(retries if max_retries is None else max_retries,
                                             backoff if retry_delay is None else retry_delay)
        wait = check_seconds(delay, "delay", optional=True)
        run_at = None if wait is None else now_ms(self.clock) + int(wait * 1000)
        owned = self.running
        base = {"graphspace": graphspace, "graph": graph, "type": spec.name, "name": name,
                "callable": spec.callable, "input": None, "owner": self.node if owned else None,
                "max_retries": retries, "retry_delay": float(backoff), "run_at": run_at, "ran": 0}
        rows = []
        limit = self.max_input_size
        for value in inputs:
            row = base.copy()  # every row is this one with its own input
            if value is not None:
                row["input"], size = encode_json(value, "input")
                if size > limit:
                    raise LimitExceeded("input", size, limit)
            rows.append(row)
        if not rows:
            return []
        # tasks for which a worker is free go straight to RUNNING in this same transaction
        direct = self._dispatcher.reserve(len(rows)) if owned and run_at is None else 0
        for row in rows[:direct]:
            row["ran"] = 1
        stopping = self._lifecycle.stopping
        try:
            ids, owned = self._store.write(moves.insert, rows, direct, run_at is not None, owned, stopping.is_set,
                                           savepoint=False)
        except BaseException:
            self._dispatcher.release(direct)
            raise
        if direct and not owned:  # written unowned: a shutdown began meanwhile
            self._dispatcher.release(direct)
        if stopping.is_set() and not owned and run_at is None:
            self._left_unowned += len(ids)
        if run_at is not None and owned:
            self._node.wake_at(run_at / 1000.0)
        elif owned:
            self._dispatcher.after_submit(ids, rows, direct)
        return ids

    def _spec(self, task_type: str) -> TaskType:
        spec = self._types.get(task_type) if isinstance(task_type, str) else None
        if spec is None:
            raise UnknownTaskType(str(task_type), list(self._types))
        return spec

    # --------------------------------------------------------------- reads
    def get(self, task_id: int, *, graph: str | None = None, graphspace: str | None = None) -> Task:
        """The task with this id (in this graph, when named).

        :raises TaskNotFound: when there is none (the message is the contract's).
        """
        self._require_open()
        task = self._store.get(check_id(task_id), graphspace, graph)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    @overload
    def list(
        self,
        status: TaskStatus | str | None = ...,
        limit: int = ...,
        graph: str | None = ...,
        graphspace: str | None = ...,
        page: None = ...,
        ids: Iterable[int] | None = ...,
    ) -> _List[Task]: ...

    @overload
    def list(
        self,
        status: TaskStatus | str | None = ...,
        limit: int = ...,
        graph: str | None = ...,
        graphspace: str | None = ...,
        *,
        page: str,
        ids: None = ...,
    ) -> TaskPage: ...

    def list(
        self,
        status: TaskStatus | str | None = None,
        limit: int = 100,
        graph: str | None = None,
        graphspace: str | None = None,
        page: str | None = None,
        ids: Iterable[int] | None = None,
    ) -> _List[Task] | TaskPage:
        """Tasks in ascending id order, filtered by every argument given.

        :param status: a status or its name, in any case.
        :param limit: at most this many; ``-1`` for all.
        :param page: ``""`` for the first page or the ``next_page`` of the
            previous one; then a :class:`~taskmgr.task.TaskPage` is returned
            (paging needs a ``limit`` of at least 1, or -1).
        :param ids: only these ids (cannot be combined with ``status`` or ``page``).
        :raises InvalidArgument: for a bad limit, page token or combination.
        :raises InvalidStatus: for a status that is not one of the twelve.
        """
        self._require_open()
        st = None if status is None else TaskStatus.parse(status)
        if isinstance(limit, bool) or not isinstance(limit, int) or not -1 <= limit <= MAX_ID:
            raise InvalidArgument(f"limit must be -1 (no limit) or a non-negative integer (at most 2**63-1), "
                                  f"got {limit!r}")
        id_list = None
        if ids is not None:
            if st is not None or page is not None:
                raise InvalidArgument("ids cannot be combined with status or page: ask for the ids alone")
            id_list = [check_id(i) for i in ids]
        if graph is not None:
            check_name(graph, "graph")
        if graphspace is not None:
            check_name(graphspace, "graphspace")
        if page is None:
            return self._store.select(status=st, graphspace=graphspace, graph=graph, ids=id_list, limit=limit)
        if not isinstance(page, str):
            raise InvalidArgument(f"page must be a string token, got {page!r}")
        if limit == 0:
            raise InvalidArgument("limit=0 cannot page (every page would be empty): ask for at least 1, or -1")
        after = decode_page(page)
        fetch = -1 if limit == -1 else min(limit + 1, MAX_ID)
        tasks = self._store.select(status=st, graphspace=graphspace, graph=graph, after=after, limit=fetch)
        if limit != -1 and len(tasks) > limit:
            tasks = tasks[:limit]
            return TaskPage(tasks, encode_page(tasks[-1].id))
        return TaskPage(tasks, None)

    def history(self, task_id: int | None = None) -> _List[Transition]:
        """The recorded status changes of one task, oldest first (or of every task, task by task in id order)."""
        self._require_open()
        return self._store.history(None if task_id is None else check_id(task_id))

    def prune_history(self, older_than: float) -> int:
        """Forget history entries older than ``older_than`` seconds; returns how many."""
        self._require_open()
        age = check_seconds(older_than, "older_than")
        assert age is not None
        return self._store.prune_history(now_ms(self.clock) - int(age * 1000))

    def wait(self, task_id: int, timeout: float | None = None) -> Task:
        """Block until the task is terminal and return it.

        Woken by the commit of the task's final status when it runs in this
        process; a change made by another process is seen within ``poll_interval`` seconds.

        :raises WaitTimeout: when ``timeout`` seconds pass first.
        :raises TaskNotFound: when the task does not exist or its record is deleted meanwhile.
        """
        self._require_open()
        return self._waiters.wait(check_id(task_id), timeout)

    def wait_many(self, task_ids: Iterable[int], timeout: float | None = None) -> _List[Task]:
        """Block until every one of these tasks is terminal; return them in the order given.

        The batch counterpart of :meth:`wait`: it reads the statuses of 512
        tasks to a statement, a task's whole row once, when it is found
        terminal, and after that only the tasks this process's commits
        finish. Changes made by another process are seen by a pass over every
        unfinished task every ``poll_interval`` seconds (spaced to at least ten
        times its own duration), and always by one last pass before a timeout.

        :raises WaitTimeout: when ``timeout`` seconds pass first (the message
            counts the unfinished tasks and names the first, with its status).
        :raises TaskNotFound: when one does not exist or its record is deleted meanwhile.
        :raises InvalidArgument: for an id that is not a positive integer.
        """
        self._require_open()
        return self._waiters.wait_many(task_ids, timeout)

    # ----------------------------------------------------------- controls
    def _actor(self) -> moves.Actor:
        return moves.Actor(self.node, self._types.keys(), self.running, self.max_restores)

    def cancel(self, task_id: int, *, graph: str | None = None, graphspace: str | None = None) -> bool:
        """Cancel a task, per the contract: a task not yet running becomes CANCELLED at once;
        a RUNNING one becomes CANCELLING and its callable is told (cooperative).

        Returns True (the request was recorded).

        :raises CannotCancel: when it is SUCCESS, FAILED, CANCELLED or CANCELLING.
        :raises TaskNotFound: when there is no such task.
        """
        self._require_open()
        if self._store.write(moves.cancel, self.node, check_id(task_id), graphspace, graph):
            self._runner.cancel(task_id)
        return True

    def delete(
        self, task_id: int, force: bool = False, *, graph: str | None = None, graphspace: str | None = None
    ) -> TaskStatus:
        """Delete a task's record (not the task), returning the status it had.

        Without ``force`` only a finished task's record can be deleted. With
        ``force`` an unfinished one goes at once: if it was not yet running it
        never starts; if it was running it runs to its end, and its outcome is
        dropped (the record never comes back).

        :raises IncompleteTask: for an unfinished task without ``force``.
        :raises TaskNotFound: when there is no such task.
        """
        self._require_open()
        return self._store.write(moves.delete, check_id(task_id), bool(force), graphspace, graph)

    def suspend(self, task_id: int, *, graph: str | None = None, graphspace: str | None = None) -> None:
        """Hold a task that has not started (NEW, SCHEDULING, SCHEDULED, QUEUED, RESTORING) in PENDING.

        A PENDING task waiting for its start time or a retry is held too, until :meth:`resume`.

        :raises InvalidTransition: for a running, finished or UNKNOWN task.
        """
        self._require_open()
        self._store.write(moves.suspend, check_id(task_id), graphspace, graph)

    def resume(self, task_id: int, *, graph: str | None = None, graphspace: str | None = None) -> None:
        """Bring a PENDING (suspended, delayed or waiting to retry) or UNKNOWN task back to run:
        RESTORING, then QUEUED on a started manager that runs its type (otherwise it is left
        unowned, for a node that does).

        :raises InvalidTransition: for a task in any other status.
        :raises UnknownTaskType: for an UNKNOWN task whose type is not registered here, and on a
            started manager for any task whose type is not.
        """
        self._require_open()
        if self._store.write(moves.resume, self._actor(), check_id(task_id), graphspace, graph, self._types):
            self._dispatcher.dispatch(task_id)

    def __repr__(self) -> str:
        return f"<TaskManager {self._lifecycle.state.value} node={self.node!r} types={sorted(self._types)}>"
