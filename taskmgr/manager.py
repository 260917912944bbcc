"""TaskManager: the public face of the library.

Lifecycle
=========

A manager is created *idle*: it can submit, read, cancel, delete, suspend and
resume tasks (an operator's CLI or a client process needs no more), but runs
nothing. :meth:`TaskManager.start` makes it a *node*: it registers itself in
the store, restores what a crashed node left behind, starts its executor and
its housekeeping poll. :meth:`TaskManager.shutdown` stops it for good: it
hands back the queued tasks and, while the running callables finish, keeps
heartbeating and polling for remote cancels (a node silent for
``node_timeout`` would be taken for dead, its running tasks run again
elsewhere).

A node on the default executor still running when the interpreter exits (a
script that ends, or raises, without calling :meth:`TaskManager.shutdown`)
is shut down then, as that call would: its running callables finish and
are recorded, its queued tasks are handed back (with a warning that says
how many), and it leaves the store's list of nodes. This happens before
Python joins its threads, which would wait for the callables with the
node's housekeeping stopped. Only in the process that started the node: a
forked child that exits leaves its parent's node alone.

Who runs a task
===============

A task submitted to a started manager is owned by it (``owner`` column) and
handed to its executor at once. When a worker is free, the submit reserves
it and writes the task straight to RUNNING (history NEW -> QUEUED -> RUNNING,
one row written, one commit), and the reserved worker runs it after that
commit: no second transaction before the callable starts. The task is
handed to the executor at once on a quiet manager; under a stream of writes
(commits that callers wait for, less than a millisecond apart) it is handed
over as the next commit starts its wait for the disk, so that the worker's
Python runs during that wait rather than against the next batch's statements
(:meth:`~taskmgr.store.Store.defer`; measured, 8% more tasks/s at FULL, 15%
at NORMAL). A quiet executor wakes a worker for it; in a stream a polling
worker takes it at its next look, within a millisecond (see
:class:`~taskmgr.executor.PoolExecutor`). Such a task reads RUNNING a little
before its callable starts: until the next commit and the worker's next
look, or up to 16 ms for the last task of a stream.
Otherwise the task is written QUEUED. A worker is often free again a moment
later: in a stream of short tasks the pool is short of workers not because
they run callables but because the last tasks handed over are still
waiting for a woken worker to get the GIL and take them (measured at
``synchronous=NORMAL``: about one submit in nine found no worker free, with
none running). So each of the next :attr:`TaskManager.START_TRIES` commits
tries again to start it, as a submit would: if a worker is free then, it is
reserved and the task moves QUEUED -> RUNNING in that commit's transaction
and is handed over after it. A try costs the commit one statement, where a
worker writing the start itself costs a commit of its own (often a
transaction more for the submitting thread) and a wait for it; measured,
the stream ran 4-7% faster. After those tries the task waits in the
executor's queue, and the worker that takes it moves it QUEUED -> RUNNING
before running it. Tries never reorder tasks: a submit's tasks are tried
only when all of them can be (a pool's worth at most) and no task waits in
the queue, a try is not repeated once one does (those came later), and a
task whose tries end takes its place in the queue ahead of every task
queued since (:meth:`~taskmgr.executor.PoolExecutor.submit_from`); a worker
freed while a try is on its way may still go to a task queued after it, by
one commit at most. Both moves are compare-and-sets, so a task cancelled,
suspended or deleted meanwhile never starts. A task submitted to an
idle manager (or resumed by one) is left unowned, NEW or RESTORING, and the
first started manager whose registry knows its type claims it at its next
poll. A node that shuts down hands its queued tasks back the same way
(RESTORING, unowned). Tasks owned by a node that is gone (its process no
longer exists, or it stopped sending heartbeats for ``node_timeout`` seconds)
are restored by the next node to start, or by a live node as soon as its
heartbeat finds the dead one.

Fenced by the owner
===================

A node can be taken for dead while it is alive: stalled past
``node_timeout`` (a suspended machine, a paused process, a long swap), it
wakes to find that another node took its tasks over and is running them
again. Both runs then read RUNNING, so a compare-and-set on the status alone
would let the late node's outcome land on the other's run, and the run that
owns the task would find it finished and lose its own outcome. So every
write a node makes for a run of its own (the start of a queued task, the
progress, the outcome, the hand-back at shutdown) also requires the row to
be still owned by that node (``Tx.move(..., held_by=node)``). The late
node's writes change nothing, and its outcome is dropped with a warning
that names the task and its new owner; its next heartbeat registers it
again (see :meth:`TaskManager._heartbeat`). The task ran twice, as
at-least-once execution allows, and records the run of the node that owns
it. Should the task come back to the late node while its first run still
goes on (taken over, handed back, claimed again), the node does not start
it a second time: its two runs would write under one name, and the first
run's outcome is the one recorded.

The same rule holds for taking tasks over: a restore, a claim and a
wake-up write a task only while it still has the owner (or no owner) they
read it with, and a restore reads which nodes are registered in each
batch's transaction, so a node that registered while a long restore went
on is not taken for dead. Under SQLite one writer at a time makes this
hold by itself; on PostgreSQL (read committed) another node's commit can
land between a read and a write, and the owner in the compare-and-set is
what keeps each take-over to the state it was decided on.

Restore
=======

On start, tasks of dead nodes are taken over (contract section 2, "restart
after a crash"): QUEUED, SCHEDULING and SCHEDULED go RESTORING -> QUEUED;
RUNNING goes RESTORING -> QUEUED with ``task_retries`` + 1, unless it was
already interrupted ``max_restores`` times, in which case it ends FAILED with a
message saying so (a task that kills its process every time must not crash-
loop forever); CANCELLING goes CANCELLED; NEW and RESTORING are queued; a
PENDING task keeps waiting under its new owner. A task whose type is not
registered, whose input no longer decodes, or whose stored status is not one of
the twelve, goes UNKNOWN with an explanation in ``task_result``. The next start
that knows a missing type restores that type's tasks by itself; a damaged
record is never re-run by itself (it may have finished already), only by an
explicit :meth:`TaskManager.resume`. Execution is therefore at-least-once: a callable interrupted
by a crash runs again.

Durability
==========

Every call that reports success has been committed (see :mod:`taskmgr.store`:
group commit). The outcome of a callable is queued when it returns and
committed with the next write, or by the store's flusher (within about a
millisecond on a quiet manager, up to 16 ms just after a burst; a CANCELLED
outcome, which someone is watching for, is committed by its worker at once);
until then the task still reads RUNNING, or CANCELLING, and if the process
dies first, the task is restored and runs again.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import enum
import functools
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, List as _List, Literal, TypeVar, overload  # noqa: UP035 - TaskManager.list shadows list

from peewee import SQL, Database

from .context import TaskContext
from .errors import (
    CannotCancel,
    IncompleteTask,
    InvalidArgument,
    InvalidTransition,
    LimitExceeded,
    ManagerStateError,
    StoreError,
    TaskCancelled,
    TaskInterrupted,
    TaskNotFound,
    UnknownTaskType,
    WaitTimeout,
)
from .executor import Executor, InlineExecutor, ManualTimer, PoolExecutor
from .status import NOT_STARTED, PREDECESSORS, TERMINAL, TaskStatus
from .store import NOBODY, Store, Tx, held, now_ms
from .task import Task, TaskPage, Transition

__all__ = ["TaskManager", "TaskType", "DEFAULT_GRAPH", "DEFAULT_GRAPHSPACE"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[[TaskContext], Any])

S = TaskStatus
DEFAULT_GRAPHSPACE = "DEFAULT"
DEFAULT_GRAPH = "hugegraph"
MiB = 1024 * 1024
_TYPE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
#: what suspend() moves to PENDING: the table's predecessors of PENDING but RUNNING (a running
#: task goes PENDING only for its own retry, never from outside)
_SUSPENDABLE = PREDECESSORS[S.PENDING] - {S.RUNNING}
#: statuses a crashed node may leave that restore acts on
_RESTORABLE = (S.QUEUED, S.RUNNING, S.SCHEDULING, S.SCHEDULED, S.RESTORING, S.CANCELLING, S.NEW, S.PENDING)
_PAGE_PREFIX = "taskmgr:"
#: the statuses a new task goes through in its submit's transaction
_PATH_PENDING = (S.NEW, S.PENDING)
_PATH_QUEUED = (S.NEW, S.QUEUED)
_PATH_RUNNING = (S.NEW, S.QUEUED, S.RUNNING)
_MAX_BACKOFF = 3600.0
#: how many times a control (cancel, suspend) reads a task again after another node's transaction
#: moved it between its read and its compare-and-set (a shared PostgreSQL; SQLite's write lock
#: keeps others out of a whole transaction)
_RACES = 8


#: started managers not yet shut down: the interpreter's exit shuts them down (see _at_exit)
_LIVE: weakref.WeakSet[TaskManager] = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hooked = False


def _hook_exit() -> None:
    """Register :func:`_at_exit` once, to run when the interpreter begins to exit.

    ``threading._register_atexit`` (what ``concurrent.futures`` uses for its own pools) runs it
    before non-daemon threads are joined and, registered after the thread pools' own hook, before
    that hook makes the pools refuse work; ``atexit`` (the fallback where it is missing) would run
    it only after.
    """
    global _exit_hooked
    with _exit_hook_lock:
        if _exit_hooked:
            return
        register = getattr(threading, "_register_atexit", atexit.register)
        try:
            register(_at_exit)
        except RuntimeError:  # the interpreter is exiting already: nothing will run it
            return
        _exit_hooked = True


def _at_exit() -> None:
    pid = os.getpid()
    for mgr in list(_LIVE):
        if mgr._pid != pid:  # a forked child's copy: the node is its parent's, still running there
            continue
        if not isinstance(mgr._executor, PoolExecutor):
            # another executor's threads may be daemons (taskmgr.testing.StepExecutor's are): Python
            # would not wait for them, and a shutdown that did would hang the exit of a host's
            # failed test that held a task RUNNING; such a node is left as a crash leaves one
            continue
        try:
            mgr._shutdown(wait=True, interrupt=False, at_exit=True)
        except Exception:  # noqa: BLE001 - one manager's failure must not keep the others running
            log.exception("could not shut down task manager node %s at interpreter exit", mgr.node)


class _State(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"  # shutdown() under way: every call still works, no task starts
    SHUT_DOWN = "shut down"


@dataclass(frozen=True)
class TaskType:
    """A registered task type: the callable that runs it and its defaults."""

    name: str
    fn: Callable[[TaskContext], Any]
    callable: str
    max_retries: int = 0
    retry_delay: float = 1.0
    http: bool = False


@dataclass
class _Outcome:
    status: TaskStatus  # SUCCESS, FAILED or CANCELLED; PENDING for a retry; RESTORING when interrupted
    result: str | None
    progress: int
    run_at: int | None = None


# A value's JSON is json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# without its circular-reference check (a value that contains itself ends in a RecursionError,
# reported as such). json.dumps builds an encoder, and the encoder a C encoder, for every call: the
# C encoder made once encodes a small input in 1 us instead of 4, a third of a submit_many's time.
# It keeps no state between calls (safe from any thread); where the C encoder is missing or no
# longer takes these arguments, the JSONEncoder made once (2.5 us) does the work.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False)


def _make_dumps() -> Callable[[Any], str]:
    try:
        from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

        make = c_make_encoder(None, _JSON.default, encode_basestring, None, ":", ",", False, False, False)
        sample = {"a": [1, 2.5, "\u00e9\n\"", None, True, False], "b": {"c": -1}, "": "x"}
        if "".join(make(sample, 0)) == _JSON.encode(sample) and "".join(make("s", 0)) == '"s"':
            return lambda value: "".join(make(value, 0))
    except Exception:  # noqa: BLE001 - no C encoder, or one of another signature: the plain one
        pass
    return _JSON.encode


_dumps = _make_dumps()


def _encode_json(value: Any, what: str) -> tuple[str, int]:
    """The JSON text of ``value`` and its size in UTF-8 bytes.

    :raises InvalidArgument: for a value JSON cannot hold, and for a string with a lone surrogate
        (UTF-8 cannot store one: the database would refuse the text, or a result could not be
        recorded at all).
    """
    if value is None or value is True or value is False:  # the commonest results, without the encoder
        return ("null", 4) if value is None else ("true", 4) if value else ("false", 5)
    try:
        text = _dumps(value)
        return text, len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"task {what} holds a lone surrogate ({exc.object[exc.start]!r}), which UTF-8 text cannot store: "
            "remove it, or send such data as base64"
        ) from None
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"task {what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"task {what} is nested too deeply, or contains itself, to be stored as JSON") from None


_MAX_ID = 2**63 - 1  # the largest id a 64-bit signed column holds (SQLite's and PostgreSQL's bigint)


def _check_id(task_id: object) -> int:
    if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id < 1:
        raise InvalidArgument(f"task id must be a positive integer, got {task_id!r}")
    if task_id > _MAX_ID:
        raise InvalidArgument(f"task id must be at most 2**63-1 = {_MAX_ID}, got {task_id}")
    return task_id


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > 4096:
        raise InvalidArgument(f"{what} is {len(value)} characters long; the limit is 4096")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(
                f"{what} holds a lone surrogate ({exc.object[exc.start]!r}), which UTF-8 text cannot store"
            ) from None
    return value


def _error_text(exc: BaseException) -> str:
    """``Type: message`` of a task's error, always storable: an error whose ``str()`` fails is
    named by its type, and a lone surrogate in its message is written as an escape."""
    try:
        text = str(exc)
    except Exception as failed:  # noqa: BLE001 - the callable's exception, whatever its __str__ does
        text = f"(its message could not be read: {type(failed).__name__})"
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def encode_page(after: int) -> str:
    """The opaque token of the page that starts after task id ``after``."""
    return base64.urlsafe_b64encode(f"{_PAGE_PREFIX}{after}".encode()).decode().rstrip("=")


def decode_page(token: str) -> int:
    """The task id a page token starts after (0 for ``""``, the first page).

    :raises InvalidArgument: for anything :func:`encode_page` did not make.
    """
    if token == "":
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if raw.startswith(_PAGE_PREFIX):
            after = int(raw[len(_PAGE_PREFIX) :])
            if after >= 0:
                return after
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidArgument(
        f"invalid page token {token!r}: pass the 'page' value of the previous answer, or '' for the first page"
    )


class TaskManager:
    """Runs registered callables as tasks and keeps their records.

    :param database: a file path (SQLite, the embedded default) or a peewee
        :class:`~peewee.Database` (SQLite or a shared PostgreSQL).
    :param workers: threads that run task callables.
    :param executor: ``"pool"`` (APScheduler thread pool, the default),
        ``"inline"`` (runs each task on the submitting thread before
        :meth:`submit` returns: deterministic, for tests), or an
        :class:`~taskmgr.executor.Executor`.
    :param synchronous: SQLite's durability for a path: ``"FULL"`` (default)
        or ``"NORMAL"``.
    :param busy_timeout: seconds to wait for another connection's write lock.
    :param history: record every status change (see :meth:`history`).
    :param max_input_size: largest ``task_input`` in bytes (16 MiB).
    :param max_result_size: largest ``task_result`` in bytes (16 MiB).
    :param poll_interval: seconds between housekeeping polls; bounds how long a
        cancel from another process takes to reach a running callable.
    :param max_restores: how many crash restores a running task gets before it
        is declared FAILED.
    :param node_timeout: seconds without a heartbeat after which another node's
        tasks are taken over.
    :param clock: time source, seconds since the epoch (tests pass a fake one).
    """

    #: how many of the commits after its submit try to start a task that found no worker free
    #: (see "Who runs a task" in the module docs; 0: none do, a worker starts it). Measured over
    #: a stream of no-op tasks at NORMAL: 4 tries started three in four of them; 16 tries, more
    #: of them but no more tasks per second
    START_TRIES = 4
    #: due PENDING tasks one wake-up transaction takes
    WAKE_BATCH = 500
    #: seconds after which a wake-up looks again at due tasks it found held by another transaction
    #: (PostgreSQL; see _wake_due), rather than at the next poll
    WAKE_RETRY = 0.05

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
    ) -> None:
        for name, value in (("max_input_size", max_input_size), ("max_result_size", max_result_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{name} must be a positive number of bytes, got {value!r}")
        if not (isinstance(max_restores, int) and max_restores >= 0):
            raise InvalidArgument(f"max_restores must be a non-negative integer, got {max_restores!r}")
        for name, interval in (("poll_interval", poll_interval), ("node_timeout", node_timeout)):
            if not isinstance(interval, (int, float)) or interval <= 0:
                raise InvalidArgument(f"{name} must be a positive number of seconds, got {interval!r}")
        if executor == "pool":
            self._executor: Executor = PoolExecutor(workers)
        elif executor == "inline":
            self._executor = InlineExecutor()
        elif isinstance(executor, str):
            raise InvalidArgument(f"executor must be 'pool', 'inline' or an Executor, got {executor!r}")
        else:
            self._executor = executor
        self._store = Store(
            database,
            synchronous=synchronous,
            busy_timeout=busy_timeout,
            history=history,
            group_commit=not self._executor.synchronous,
            clock=clock,
        )
        self._store.add_listener(self._on_commit)
        self._reserve_fn: Callable[[int], int] | None = getattr(self._executor, "reserve", None)
        #: how many tasks may wait at once for a coming commit to start them (see _start_later): a
        #: worker's worth; none where submits get no reserved worker, writes are not batched, or the
        #: executor cannot put a task back in its place in line (PoolExecutor's mark and submit_from)
        self._later_max = (0 if self._reserve_fn is None or self._executor.synchronous
                           or not all(hasattr(self._executor, a) for a in ("mark", "submit_from", "waiting"))
                           else int(getattr(self._executor, "workers", workers)))
        self.clock = clock
        self.max_input_size = max_input_size
        self.max_result_size = max_result_size
        self.poll_interval = float(poll_interval)
        self.max_restores = max_restores
        self.node_timeout = float(node_timeout)
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._types: dict[str, TaskType] = {}
        self._state = _State.IDLE
        self._state_lock = threading.RLock()  # re-entrant: a signal handler may call shutdown() inside
        self._lifecycle = threading.Lock()  # held through start() and shutdown(): one at a time
        self._lifecycle_owner: int | None = None  # the thread inside start(), while it is
        self._shutdown_owner: int | None = None  # the thread inside _shutdown(), while it is
        self._stop_after_start: tuple[bool, bool, bool] | None = None  # a shutdown asked on that thread
        self._was_running = False  # whether the shutdown under way (or interrupted) stops a node
        self._stopping = False
        self._running: dict[int, TaskContext] = {}
        self._unsaved: dict[int, _Outcome] = {}
        self._undispatched: set[int] = set()  # queued tasks whose start could not be written
        self._cancel_lock = threading.Lock()
        #: tasks of this node cancelled while RUNNING before their worker registered them
        self._early_cancels: set[int] = set()
        self._early_seen: set[int] = set()  # those of them there at the last poll
        #: tasks written QUEUED whose start a coming commit tries (see _start_later): whether each
        #: holds a reserved worker
        self._later: dict[int, bool] = {}
        self._done = threading.Condition()
        self._generation = 0  # bumped by every commit that finishes a task (and by shutdown)
        self._waiters = 0  # threads in wait(): a commit notifies only when there are some
        self._watchers: dict[object, _List[int]] = {}  # one per wait_many(): the ids each commit finished
        self._last_heartbeat = 0.0
        self._left_unowned = 0  # tasks submitted during the shutdown, written unowned
        # a wake-up's look again at due tasks held by another transaction: one at a time, backing off
        self._wake_retry_lock = threading.Lock()
        self._wake_retry_pending = False
        self._wake_retry_delay = self.WAKE_RETRY
        self._pid = os.getpid()  # the process that started it: the only one its exit hook shuts it down in

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

    def register(
        self,
        name: str,
        fn: Callable[[TaskContext], Any],
        *,
        max_retries: int = 0,
        retry_delay: float = 1.0,
        http: bool = False,
    ) -> TaskType:
        """Register ``fn`` as the callable of task type ``name`` (see :meth:`task`)."""
        if not isinstance(name, str) or not _TYPE_NAME.match(name):
            raise InvalidArgument(
                f"task type must be 1-128 letters, digits or '_.:-' (not starting with a punctuation mark), "
                f"got {name!r}"
            )
        if not callable(fn):
            raise InvalidArgument(f"the callable for task type {name!r} is not callable: {fn!r}")
        _check_retries(max_retries, retry_delay)
        if name in self._types and self._types[name].fn is not fn:
            raise InvalidArgument(f"task type {name!r} is already registered to {self._types[name].callable}")
        path = f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        spec = TaskType(name, fn, path, max_retries, float(retry_delay), http)
        self._types[name] = spec
        return spec

    @property
    def task_types(self) -> dict[str, TaskType]:
        """The registered task types by name (a copy)."""
        return dict(self._types)

    # ----------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`shutdown`."""
        return self._state is _State.RUNNING

    def start(self) -> TaskManager:
        """Become a node: restore what dead nodes left, then run tasks. Returns ``self``."""
        self._check_startable()
        # set before the lock is taken: a shutdown() that a signal handler makes on this thread
        # from here on is deferred to the end of start(), never waits for the lock this thread holds
        self._lifecycle_owner = threading.get_ident()
        try:
            with self._lifecycle:  # a shutdown called meanwhile from another thread waits for the node
                self._check_startable(then=_State.RUNNING)
                self._store.register_node(self.node, now_ms(self.clock))
                self._last_heartbeat = time.monotonic()
                _hook_exit()
                self._pid = os.getpid()
                _LIVE.add(self)
                self._executor.start()
                self.restore()
                self._executor.every(self.poll_interval, self._tick)
        finally:
            self._lifecycle_owner = None
        stop, self._stop_after_start = self._stop_after_start, None
        if stop is not None:  # asked on this very thread while it started (a signal handler)
            self._shutdown(*stop)
        return self

    def _check_startable(self, then: _State | None = None) -> None:
        with self._state_lock:
            if self._state is not _State.IDLE:
                raise ManagerStateError(f"Cannot start the task manager when it is in the {self._state.value!r} state")
            if then is not None:
                self._state = then

    def shutdown(self, wait: bool = True, interrupt: bool = False) -> None:
        """Stop running tasks and close the store.

        Tasks this node had queued but not started are handed back (QUEUED ->
        RESTORING, unowned) for any started node to claim, or for this file's
        next start. With ``wait`` (the default) running callables are allowed
        to finish and their outcome is recorded; with ``interrupt`` they are
        first asked to stop (see :class:`~taskmgr.context.TaskContext`): one
        that stops is handed back too, to run again. While they run, the node
        goes on heartbeating, noticing cancels from other processes and saving
        progress (on the default executor): it is alive until they return, and
        no other node takes their tasks over. Without ``wait`` they are
        abandoned, like a crash: the next start restores them.

        Until it returns, every other call works (a running callable may still
        submit, read, wait or cancel; what it submits is left unowned, for any
        started node). A ``shutdown()`` called while another is under way
        returns at once (a signal handler's, say); one called while the node
        starts waits for it, or, on the very thread that is starting it, runs
        once :meth:`start` is done. Called by a task's callable (of this
        manager, which it could not wait for, or of another, which might be
        waiting for one of this manager's), or on the thread in the middle of
        the store's commit (a signal handler that interrupted a submit), it
        returns at once and the shutdown goes on in a thread of its own.
        Interrupted while it waits for the callables (a second Ctrl-C), it
        leaves the node running them,
        heartbeating and recording their outcomes; calling it again, or the
        interpreter's exit, completes it.

        A manager still running when the interpreter exits is shut down then,
        with ``wait`` and without ``interrupt`` (see the module docs).
        """
        # on a pool worker (a task's callable), or on the thread leading the store's commit (a
        # signal handler that interrupted a submit there): waiting for the shutdown here would wait
        # for this very thread
        if PoolExecutor.in_any_worker() or self._store.leading_here():
            with self._state_lock:
                if self._stopped_or_stopping():
                    return
            # not a daemon (a pool worker's threads are): the interpreter's exit waits for it
            threading.Thread(target=self._shutdown, args=(wait, interrupt, False), name="taskmgr-shutdown",
                             daemon=False).start()
            return
        self._shutdown(wait, interrupt, at_exit=False)

    def _stopped_or_stopping(self) -> bool:
        """Shut down, or a shutdown under way (holding the lifecycle lock); not an interrupted
        one, which a new call completes. Caller holds ``_state_lock``."""
        return self._state is _State.SHUT_DOWN or (self._state is _State.STOPPING and self._lifecycle.locked())

    def _shutdown(self, wait: bool, interrupt: bool, at_exit: bool) -> None:
        me = threading.get_ident()
        with self._state_lock:
            if self._stopped_or_stopping():
                return  # done, or under way (perhaps on this very thread: a signal handler)
            if self._shutdown_owner == me:
                return  # a signal handler on the thread already shutting the node down
            if self._lifecycle_owner == me:  # this thread is inside start()
                self._stop_after_start = (wait, interrupt, at_exit)
                return
            self._shutdown_owner = me  # before the lock: a signal handler on this thread returns above
        try:
            self._shutdown_locked(wait, interrupt, at_exit)
        finally:
            self._shutdown_owner = None

    def _shutdown_locked(self, wait: bool, interrupt: bool, at_exit: bool) -> None:
        with self._lifecycle:  # after a start under way on another thread
            with self._state_lock:
                if self._state is _State.SHUT_DOWN:
                    return
                if self._state is not _State.STOPPING:  # (STOPPING: an interrupted shutdown, completed now)
                    self._was_running = self._state is _State.RUNNING
                    self._state = _State.STOPPING
            was_running = self._was_running
            self._stopping = True
            _LIVE.discard(self)
            failed: Exception | None = None
            try:
                if was_running:
                    failed = self._stop_node(wait, interrupt, at_exit)
            except BaseException as exc:
                # interrupted (KeyboardInterrupt, SystemExit) while callables may still run: the
                # node stays, its poll keeping it alive (_tick), for a later shutdown() or the
                # interpreter's exit to complete
                if not isinstance(exc, Exception) and isinstance(self._executor, PoolExecutor):
                    _LIVE.add(self)
                raise
            with self._state_lock:
                self._state = _State.SHUT_DOWN
            self._store.close()
            with self._done:
                self._generation += 1
                self._done.notify_all()
        if failed is not None:
            raise failed

    def _stop_node(self, wait: bool, interrupt: bool, at_exit: bool) -> Exception | None:
        """Stop the executor (keeping the node alive while its callables finish, see shutdown),
        then hand back what the node owns and leave the store's list of nodes. Returns the
        executor's shutdown error, if any, for the caller to raise once the store is closed."""
        failed: Exception | None = None
        try:
            if interrupt:
                for ctx in list(self._running.values()):
                    ctx._request_interrupt()
            if wait and hasattr(self._executor, "close") and hasattr(self._executor, "join"):
                # the node is alive while its callables run: it heartbeats (else another node would
                # take their tasks over and run them again), and cancels from other processes and
                # progress still reach it
                self._executor.close()
                while not self._executor.join(self.poll_interval):
                    self._keep_alive()
            self._executor.shutdown(wait=wait)
        except Exception as exc:  # noqa: BLE001 - the node leaves and the store closes all the same
            failed = exc
        try:
            self._retry_unsaved()
            self._flush_progress()
            handed_back = self._store.write(self._release)
            self._store.remove_node(self.node)
        except StoreError:
            log.exception("could not record the shutdown of node %s", self.node)
            return failed
        if at_exit and (handed_back or self._left_unowned):
            log.warning("task manager node %s was still running at interpreter exit: shut down; %d queued "
                        "tasks handed back and %d submitted meanwhile left unowned, for the next start to "
                        "run (call shutdown() to choose when)", self.node, handed_back, self._left_unowned)
        return failed

    def _release(self, tx: Tx) -> int:
        """Hand back what this node owns but is not running: queued tasks, tasks committed RUNNING
        whose callable never started (their worker was still to pick them up), and waiting
        PENDING ones. Returns how many of the first two were handed back."""
        T = self._store.Task
        busy = set(self._running) | set(self._unsaved)
        moved = 0
        for tid in self._store.ids_where(T.owner == self.node, T.status == S.QUEUED.value):
            if tid not in busy:
                moved += tx.move(tid, S.QUEUED, S.RESTORING, held_by=self.node, owner=None)
        for tid in self._store.ids_where(T.owner == self.node, T.status == S.RUNNING.value):
            if tid not in busy:
                moved += tx.move(tid, S.RUNNING, S.RESTORING, held_by=self.node, owner=None, ran=0)
        T.update(owner=None).where(T.owner == self.node, T.status == S.PENDING.value).execute()
        return moved

    def __enter__(self) -> TaskManager:
        if self._state is _State.IDLE:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    def _require_open(self) -> None:
        if self._state is _State.SHUT_DOWN:
            raise ManagerStateError("the task manager is shut down; create a new TaskManager to use the store again")

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
        :raises InvalidArgument: for non-JSON input and other bad values.
        :raises LimitExceeded: when the input's JSON is over ``max_input_size``.
        """
        return self.submit_many(
            task_type,
            [input],
            name=name,
            graph=graph,
            graphspace=graphspace,
            max_retries=max_retries,
            retry_delay=retry_delay,
            delay=delay,
        )[0]

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
        name = spec.name if name is None else _check_name(name, "task name")
        if graph is not DEFAULT_GRAPH:
            _check_name(graph, "graph")
        if graphspace is not DEFAULT_GRAPHSPACE:
            _check_name(graphspace, "graphspace")
        retries = spec.max_retries if max_retries is None else max_retries
        backoff = spec.retry_delay if retry_delay is None else retry_delay
        if max_retries is not None or retry_delay is not None:  # the type's own were checked by register()
            _check_retries(retries, backoff)
        if delay is not None and (not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay < 0):
            raise InvalidArgument(f"delay must be a non-negative number of seconds, got {delay!r}")
        run_at = None if delay is None else now_ms(self.clock) + int(delay * 1000)
        dispatch = self.running
        # every row is this one with its own input (a copy costs a third of a dict display)
        base = {
            "graphspace": graphspace,
            "graph": graph,
            "type": spec.name,
            "name": name,
            "callable": spec.callable,
            "input": None,
            "owner": self.node if dispatch else None,
            "max_retries": retries,
            "retry_delay": float(backoff),
            "run_at": run_at,
            "ran": 0,
        }
        rows = []
        limit = self.max_input_size
        for value in inputs:
            row = base.copy()
            if value is not None:
                row["input"], size = _encode_json(value, "input")
                if size > limit:
                    raise LimitExceeded("input", size, limit)
            rows.append(row)
        if not rows:
            return []
        # Tasks for which a worker is free go straight to RUNNING in this same transaction:
        # no second commit, no hand-off between threads before the callable starts.
        direct = self._reserve(len(rows)) if dispatch and run_at is None else 0
        for row in rows[:direct]:
            row["ran"] = 1
        try:
            ids, dispatch = self._store.write(_op_insert, self, rows, direct, run_at is not None, dispatch,
                                              savepoint=False)
        except BaseException:
            if direct:
                self._executor.release(direct)
            raise
        if direct and not dispatch:  # written unowned: a shutdown began meanwhile (see _op_insert)
            self._executor.release(direct)
        if self._stopping and not dispatch and run_at is None:
            self._left_unowned += len(ids)  # for the exit hook's warning
        if run_at is not None and dispatch:
            self._executor.call_at(run_at / 1000.0, self._wake_due)
        elif dispatch:
            # the tasks without a worker are tried by the next commits only when all of them can be
            # and none waits in line before them: a task never starts after one submitted after it
            # because it was being tried (the tries' end puts it back in its place: _started_later)
            rest = len(ids) - direct
            later = (rest and self.START_TRIES and len(self._later) + rest <= self._later_max
                     and not self._executor.waiting)  # type: ignore[attr-defined]
            since = self._executor.mark() if later else 0  # type: ignore[attr-defined]
            for i, tid in enumerate(ids):
                row = rows[i]  # this call's own: completed in place, it is what the worker runs
                row["id"], row["retries"], row["progress"] = tid, 0, 0
                if i < direct:
                    self._hand_over(tid, row)
                elif later:
                    self._start_later(tid, row, 0, since)
                else:
                    self._dispatch(tid)
        return ids

    def _hand_over(self, tid: int, row: dict[str, Any]) -> None:
        """Give a task committed RUNNING to the worker reserved for it, as the next commit waits for
        the disk (at once when no other write is coming): see Store.defer."""
        self._store.defer(functools.partial(self._executor.submit, functools.partial(self._run, tid, row),
                                            reserved=True))

    def _start_later(self, tid: int, row: dict[str, Any], tries: int, since: int) -> None:
        """Try to start a task written QUEUED for want of a free worker in the next commit's
        transaction (see "Who runs a task" in the module docs); ``since``: the executor's
        :meth:`~taskmgr.executor.PoolExecutor.mark` when the task was submitted."""
        self._later[tid] = False  # holds no reservation yet
        try:
            self._store.write_async(_op_start_later, self, tid, savepoint=False,
                                    callback=functools.partial(self._started_later, tid, row, tries + 1, since))
        except StoreError:  # the store is closing: to the executor's queue (a shutdown hands it back)
            del self._later[tid]
            self._dispatch_from(tid, since)

    def _dispatch_from(self, tid: int, since: int) -> None:
        """Queue a task whose start was tried by commits in its place in line (see submit_from)."""
        self._executor.submit_from(lambda: self._run(tid), since)  # type: ignore[attr-defined]

    def _started_later(self, tid: int, row: dict[str, Any], tries: int, since: int, ok: bool, value: Any) -> None:
        """After the commit that carried :func:`_op_start_later`: hand the task over, try again at
        the next commit, or leave it to the executor's queue, in its place in line."""
        held = self._later.pop(tid)
        if ok and value:  # committed RUNNING, with a worker reserved
            self._hand_over(tid, row)
            return
        if held:
            self._executor.release(1)
        if ok and value is False:
            return  # cancelled, suspended or deleted meanwhile: nothing to start
        # tasks waiting in line came after this one: rather than try again, and let one of them
        # take the next free worker meanwhile, it takes its place in line ahead of them
        if ok and tries < self.START_TRIES and not self._stopping and not self._executor.waiting:  # type: ignore[attr-defined]
            self._start_later(tid, row, tries, since)
        else:
            self._dispatch_from(tid, since)

    def _reserve(self, n: int) -> int:
        return 0 if self._reserve_fn is None else self._reserve_fn(n)

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
        task = self._store.get(_check_id(task_id), graphspace, graph)
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
            previous one; then a :class:`~taskmgr.task.TaskPage` is returned.
        :param ids: only these ids (cannot be combined with ``status`` or ``page``).
        :raises InvalidArgument: for a bad limit, page token or combination.
        :raises InvalidStatus: for a status that is not one of the twelve.
        """
        self._require_open()
        st = None if status is None else TaskStatus.parse(status)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < -1:
            raise InvalidArgument(f"limit must be -1 (no limit) or a non-negative integer, got {limit!r}")
        id_list = None
        if ids is not None:
            if st is not None or page is not None:
                raise InvalidArgument("ids cannot be combined with status or page: ask for the ids alone")
            id_list = [_check_id(i) for i in ids]
        if graph is not None:
            _check_name(graph, "graph")
        if graphspace is not None:
            _check_name(graphspace, "graphspace")
        if page is None:
            return self._store.select(status=st, graphspace=graphspace, graph=graph, ids=id_list, limit=limit)
        if not isinstance(page, str):
            raise InvalidArgument(f"page must be a string token, got {page!r}")
        after = decode_page(page)
        fetch = -1 if limit == -1 else limit + 1
        tasks = self._store.select(status=st, graphspace=graphspace, graph=graph, after=after, limit=fetch)
        if limit != -1 and len(tasks) > limit:
            tasks = tasks[:limit]
            return TaskPage(tasks, encode_page(tasks[-1].id) if tasks else encode_page(after))
        return TaskPage(tasks, None)

    def history(self, task_id: int | None = None) -> _List[Transition]:
        """The recorded status changes of one task, oldest first (or of every task, task by task in
        id order)."""
        self._require_open()
        return self._store.history(None if task_id is None else _check_id(task_id))

    def prune_history(self, older_than: float) -> int:
        """Forget history entries older than ``older_than`` seconds; returns how many."""
        self._require_open()
        if not isinstance(older_than, (int, float)) or older_than < 0:
            raise InvalidArgument(f"older_than must be a non-negative number of seconds, got {older_than!r}")
        return self._store.prune_history(now_ms(self.clock) - int(older_than * 1000))

    def wait(self, task_id: int, timeout: float | None = None) -> Task:
        """Block until the task is terminal and return it.

        Woken by the commit of the task's final status when it runs in this
        process; a change made by another process is seen within
        ``poll_interval`` seconds.

        :raises WaitTimeout: when ``timeout`` seconds pass first.
        :raises TaskNotFound: when the task does not exist or its record is deleted meanwhile.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # read before the task: a commit after this read bumps it, and the wait below is skipped
            generation = self._generation
            task = self.get(task_id)
            if task.terminal:
                return task
            pause = self.poll_interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"task {task_id} is still {task.status.name} after {timeout} s")
                pause = min(pause, left)
            with self._done:
                # counted before the generation is compared: a commit that bumps it after the
                # comparison sees this waiter and notifies; one that bumped it before is seen here
                self._waiters += 1
                try:
                    if self._generation == generation:
                        self._done.wait(pause)
                finally:
                    self._waiters -= 1
            self._require_open()

    def wait_many(self, task_ids: Iterable[int], timeout: float | None = None) -> _List[Task]:
        """Block until every one of these tasks is terminal; return them in the order given.

        The batch counterpart of :meth:`wait`, as :meth:`submit_many` is of
        :meth:`submit`. A :meth:`wait` per task reads each task on its own
        (13-20 us for a finished one); this reads the statuses of 512 tasks to
        a statement, and a task's whole row once, when it is found terminal.
        Woken by the commits of this process that finish tasks, it then reads
        only those. Changes made by another process are seen by a pass over
        every unfinished task every ``poll_interval`` seconds (spaced to at
        least ten times its own duration, so a wait on a huge set does not
        spend its time reading), and always by one last pass before a timeout.

        :raises WaitTimeout: when ``timeout`` seconds pass first (the message
            counts the unfinished tasks and names the first, with its status).
        :raises TaskNotFound: when one does not exist or its record is deleted meanwhile.
        :raises InvalidArgument: for an id that is not a positive integer.
        """
        order = [_check_id(task_id) for task_id in task_ids]
        self._require_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        # the unfinished, in the order given (the first is the one a timeout names), with the status last read
        pending: dict[int, TaskStatus | None] = dict.fromkeys(order)
        done: dict[int, Task] = {}
        finished: _List[int] = []  # filled by _on_commit while this waits
        token = object()
        with self._done:
            self._watchers[token] = finished
        try:
            check, full = list(pending), True
            while True:
                # read before the tasks: a commit after this read bumps it, and the wait below is skipped
                generation = self._generation
                began = time.monotonic()
                self._settle(check, pending, done)
                if not pending:
                    return [done[task_id] for task_id in order]
                now = time.monotonic()
                if full:
                    next_full = now + max(self.poll_interval, 10 * (now - began))
                if deadline is not None and now >= deadline:
                    if full:
                        first, status = next(iter(pending.items()))
                        raise WaitTimeout(
                            f"{len(pending)} of {len(done) + len(pending)} tasks are still not terminal after "
                            f"{timeout} s; the first is task {first}, {status.name if status else 'unread'}")
                    check, full = list(pending), True  # the last word on every task before a timeout
                    continue
                pause = next_full - now if deadline is None else min(next_full, deadline) - now
                with self._done:
                    self._waiters += 1
                    try:
                        if self._generation == generation and not finished and pause > 0:
                            self._done.wait(pause)
                    finally:
                        self._waiters -= 1
                    just_finished = finished[:]
                    finished.clear()
                self._require_open()
                now = time.monotonic()
                full = now >= next_full or (deadline is not None and now >= deadline)
                check = list(pending) if full else [task_id for task_id in just_finished if task_id in pending]
        finally:
            with self._done:
                del self._watchers[token]

    def _settle(self, check: _List[int], pending: dict[int, TaskStatus | None], done: dict[int, Task]) -> None:
        """Read the statuses of ``check``; move those found terminal from ``pending`` to ``done``,
        with their rows (see :meth:`wait_many`)."""
        if not check:
            return
        statuses = self._store.statuses(check)
        ended = []
        for task_id in check:
            status = statuses.get(task_id)
            if status is None:
                raise TaskNotFound(task_id)
            if status.terminal:
                ended.append(task_id)
            else:
                pending[task_id] = status
        if not ended:
            return
        rows = {task.id: task for task in self._store.select(ids=ended)}
        for task_id in ended:
            task = rows.get(task_id)
            if task is None:  # deleted between the two reads
                raise TaskNotFound(task_id)
            if task.terminal:
                done[task_id] = task
                del pending[task_id]
            else:
                pending[task_id] = task.status

    # ----------------------------------------------------------- controls
    def cancel(self, task_id: int, *, graph: str | None = None, graphspace: str | None = None) -> bool:
        """Cancel a task, per the contract: a task not yet running becomes CANCELLED at once;
        a RUNNING one becomes CANCELLING and its callable is told (cooperative).

        Returns True (the request was recorded).

        :raises CannotCancel: when it is SUCCESS, FAILED, CANCELLED or CANCELLING.
        :raises TaskNotFound: when there is no such task.
        """
        self._require_open()
        _check_id(task_id)

        def op(tx: Tx) -> bool:
            """True when it is now CANCELLING and runs on this node."""
            for _ in range(_RACES):
                row = tx.require(task_id, graphspace, graph)
                st = _damaged_to_unknown(tx, row)
                if st in NOT_STARTED:
                    if tx.move(task_id, st, S.CANCELLED, run_at=None):
                        return False
                elif st is S.RUNNING:
                    if tx.move(task_id, st, S.CANCELLING):
                        return bool(row["owner"] == self.node)
                else:
                    raise CannotCancel(task_id, st)
                # lost a race: another node's transaction moved the task between the read and the
                # compare-and-set (a shared PostgreSQL reads committed rows): read it again
            raise InvalidTransition(task_id, st, S.CANCELLED)

        if self._store.write(op):
            with self._cancel_lock:
                ctx = self._running.get(task_id)
                if ctx is None:  # its worker has not registered it yet: it is told as it does
                    self._early_cancels.add(task_id)
            if ctx is not None:
                ctx._request_cancel()
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
        _check_id(task_id)

        def op(tx: Tx) -> TaskStatus:
            row = tx.require(task_id, graphspace, graph)
            st = _status(row)
            if (st is None or not st.terminal) and not force:
                raise IncompleteTask(task_id, st or row["status"])
            tx.delete(task_id)
            return st or S.UNKNOWN

        return self._store.write(op)

    def suspend(self, task_id: int, *, graph: str | None = None, graphspace: str | None = None) -> None:
        """Hold a task that has not started (NEW, SCHEDULING, SCHEDULED, QUEUED, RESTORING) in PENDING.

        A PENDING task waiting for its start time or a retry is held too, until
        :meth:`resume`.

        :raises InvalidTransition: for a running, finished or UNKNOWN task.
        """
        self._require_open()
        _check_id(task_id)

        def op(tx: Tx) -> None:
            for _ in range(_RACES):
                row = tx.require(task_id, graphspace, graph)
                st = _status(row)
                if st is S.PENDING:
                    if tx.update(task_id, (S.PENDING,), run_at=None, updated=tx.now):
                        return
                elif st not in _SUSPENDABLE:
                    break
                elif tx.move(task_id, st, S.PENDING, run_at=None):
                    return
                # lost a race with another node's transaction (see cancel): read the row again
            raise InvalidTransition(
                task_id,
                st or row["status"],
                S.PENDING,
                f"Can't suspend task '{task_id}' in status {row['status'].upper()}: only a task that has not "
                "started (NEW, SCHEDULING, SCHEDULED, QUEUED, RESTORING) can be suspended; cancel a running one",
            )

        self._store.write(op)

    def resume(self, task_id: int, *, graph: str | None = None, graphspace: str | None = None) -> None:
        """Bring a PENDING (suspended, delayed or waiting to retry) or UNKNOWN task back to run:
        RESTORING, then QUEUED on a started manager (an idle one leaves it for a node to claim).

        :raises InvalidTransition: for a task in any other status.
        :raises UnknownTaskType: for an UNKNOWN task whose type is not registered here.
        """
        self._require_open()
        _check_id(task_id)

        def op(tx: Tx) -> bool:
            row = tx.require(task_id, graphspace, graph)
            st = _damaged_to_unknown(tx, row)
            if st not in (S.PENDING, S.UNKNOWN):
                raise InvalidTransition(
                    task_id,
                    st,
                    S.RESTORING,
                    f"Can't resume task '{task_id}' in status {st.name}: only a PENDING or UNKNOWN task can be resumed",
                )
            if self.running or st is S.UNKNOWN:
                self._spec(row["type"])  # refuse rather than turn it UNKNOWN behind the caller's back
            if st is S.UNKNOWN:
                _decode_input(row)
            # on the status alone: the task is not running, and what may change its owner meanwhile
            # (a node's hand-back, a restore taking a dead node's PENDING task over) leaves it as
            # resumable as it was read (with the owner read, resume did nothing and said nothing)
            return self._requeue(tx, row, st, fenced=False)

        if self._store.write(op):
            self._dispatch(task_id)

    # ------------------------------------------------------------- restore
    def restore(self) -> int:
        """Take over the tasks of dead nodes (see the module docs); returns how many it examined.

        Called by :meth:`start`; call it again to take over from a node that
        died while this one was running.
        """
        if not self.running:
            raise ManagerStateError("restore() needs a started manager: call start() first")
        store = self._store
        T = store.Task
        live, _dead = store.reap_nodes(int(self.node_timeout * 1000))
        live.add(self.node)
        orphaned = (T.owner.is_null()) | (T.owner.not_in(list(live)))
        statuses = [s.value for s in _RESTORABLE]
        touched = 0
        after = 0
        while True:
            ids = store.ids_where(T.id > after, T.status.not_in([s.value for s in TERMINAL]), orphaned, limit=1000)
            if not ids:
                break
            after = ids[-1]
            queued = store.write(self._restore_batch, ids, statuses)
            touched += len(ids)
            for tid in queued:
                self._dispatch(tid)
            # a restore over a big backlog outlasts a heartbeat's interval (start() restores before its
            # poll begins): silent for node_timeout, this node would be taken for dead while it works
            self._heartbeat(take_over=False)
        if touched:
            log.info("restored %d task(s) left by stopped nodes", touched)
        return touched

    def _restore_batch(self, tx: Tx, ids: _List[int], statuses: _List[str]) -> _List[int]:
        """Take over the tasks among ``ids`` that no registered node owns. Who is registered is
        read here, in the batch's transaction, after its rows: a restore over a big backlog takes
        many batches, and a node that registered since the restore began (or since the ids were
        read) is alive. Every write requires the owner it read (``held_by``): on a database that
        lets another node's commit land between this read and the write (PostgreSQL), a task
        that node restored and started meanwhile is left alone."""
        queued: _List[int] = []
        rows = tx.rows(ids)  # one read for the batch, in its transaction
        live = tx.nodes() | {self.node}
        for tid in ids:
            row = rows.get(tid)
            if row is None or (row["owner"] is not None and row["owner"] in live):
                continue  # gone, or owned by a registered node
            if row["owner"] is None and row["type"] not in self._types:
                continue  # nobody's, and not for this node: a node that registers its type claims it
            st = _damaged_to_unknown(tx, row)
            fence = held(row["owner"])
            if st is S.PENDING:
                tx.update(tid, (S.PENDING,), held_by=fence, owner=self.node)
            elif st is S.CANCELLING:
                tx.move(tid, st, S.CANCELLED, held_by=fence)
            elif st.value in statuses or st is S.UNKNOWN:
                if st is S.UNKNOWN and not (
                    (row["result"] or "").startswith(_UNREGISTERED) and row["type"] in self._types
                ):
                    continue  # only resume() brings back a record that was damaged or whose type is still missing
                if st is S.RUNNING and row["restores"] >= self.max_restores:
                    tx.move(
                        tid,
                        st,
                        S.FAILED,
                        held_by=fence,
                        result=f"RestoreLimit: the task was interrupted while running {row['restores'] + 1} "
                        f"times (its process died each time); gave up after max_restores={self.max_restores}",
                    )
                    continue
                extra: dict[str, Any] = {}
                if st is S.RUNNING:
                    extra["restores"] = row["restores"] + 1
                    row = dict(row, ran=1)
                if self._requeue(tx, row, st, **extra):
                    queued.append(tid)
        return queued

    def _requeue(self, tx: Tx, row: dict[str, Any], st: TaskStatus, fenced: bool = True, **extra: Any) -> bool:
        """Bring a task from ``st`` back to QUEUED by the table's paths, and say whether to dispatch it.

        QUEUED, PENDING, RUNNING and UNKNOWN go through RESTORING; NEW and
        SCHEDULED go straight to QUEUED; SCHEDULING goes back to NEW first (the
        table has no SCHEDULING -> RESTORING). An idle manager stops at
        RESTORING, unowned, for a started node to claim.
        """
        tid = row["id"]
        fence = held(row["owner"]) if fenced else None  # every write requires the owner read with the row
        fields: dict[str, Any] = {"run_at": None, **extra}
        if row["ran"]:
            fields.update(retries=row["retries"] + 1, ran=0)
        if self.running:
            # marked UNKNOWN, it keeps what this restore counted (an interrupted run's restores and
            # retries): max_restores must hold through UNKNOWN too, or a task that kills its process
            # would crash-loop between nodes that know its type and nodes that do not
            if row["type"] not in self._types:
                return self._mark_unknown(tx, row, st, _unregistered_text(row["type"]), **fields)
            if _decode_input_or_none(row) is _BAD:
                return self._mark_unknown(tx, row, st, "InvalidInput: the stored task_input is not valid JSON",
                                          **fields)
        owner = self.node if self.running else None
        if st is S.SCHEDULING:
            if not tx.move(tid, st, S.NEW, held_by=fence):
                return False
            st = S.NEW
        if st in (S.NEW, S.SCHEDULED):
            return self.running and tx.move(tid, st, S.QUEUED, held_by=fence, owner=owner, **fields)
        if st is S.RESTORING:
            if self.running:  # the owner and the move in one statement: no unowned QUEUED in between
                return tx.move(tid, S.RESTORING, S.QUEUED, held_by=fence, owner=owner, result=None, **fields)
            tx.update(tid, (S.RESTORING,), held_by=fence, owner=owner, **fields)
            return False
        if self.running:  # through RESTORING to QUEUED in one statement (half a restore's writes)
            return tx.move_path(tid, (st, S.RESTORING, S.QUEUED), held_by=fence, owner=owner, result=None, **fields)
        tx.move(tid, st, S.RESTORING, held_by=fence, owner=owner, **fields)
        return False

    @staticmethod
    def _mark_unknown(tx: Tx, row: dict[str, Any], st: TaskStatus, why: str, **fields: Any) -> bool:
        """UNKNOWN, with the reason, and nobody's: no node runs it, and the next node to start
        that knows its type restores it (owned by a node that lives on, it would wait for resume())."""
        fence = held(row["owner"])
        if st is not S.UNKNOWN:
            tx.move(row["id"], st, S.UNKNOWN, held_by=fence, **{**fields, "owner": None, "result": why})
        else:
            tx.update(row["id"], (S.UNKNOWN,), held_by=fence, **{**fields, "owner": None, "result": why})
        return False

    # ----------------------------------------------------------- execution
    def _dispatch(self, task_id: int) -> None:
        """Hand a queued task to the executor (a task its submit committed RUNNING goes straight to
        the worker it reserved: see :meth:`submit_many`)."""
        self._executor.submit(lambda: self._run(task_id))

    def _run(self, task_id: int, row: dict[str, Any] | None = None) -> None:
        """The job the executor runs for one task: a queued one, or (``row`` given) one that its
        submit's transaction already moved to RUNNING."""
        if self._stopping:
            return  # left QUEUED (or RUNNING, never started): shutdown hands it back
        if row is None:
            try:
                row = self._store.write(_op_start, self.node, task_id, savepoint=False)
            except StoreError as exc:
                log.error("could not start task %d (%s); it stays QUEUED and is tried again at the next poll",
                          task_id, exc)
                self._undispatched.add(task_id)
                return
            if row is None:
                return  # cancelled, suspended or deleted while queued
        spec = self._types[row["type"]]
        ctx = TaskContext(
            task_id,
            spec.name,
            row["name"],
            json.loads(row["input"]) if row["input"] is not None else None,
            graph=row["graph"],
            graphspace=row["graphspace"],
            retries=row["retries"],
            progress=row["progress"],
        )
        with self._cancel_lock:
            if task_id in self._running:
                # An earlier run of this task is still going here: this node was taken for dead, the
                # task taken over and handed back, and the node claimed it again. Both runs would
                # write as this node: one run at a time, and the earlier run's outcome is recorded.
                log.warning("task %d is already running on this node (%s), from before it was taken for dead: "
                            "not starting it a second time; the running call's outcome will be recorded",
                            task_id, self.node)
                return
            self._running[task_id] = ctx
            if self._early_cancels and task_id in self._early_cancels:
                self._early_cancels.discard(task_id)
                ctx._request_cancel()
        try:
            value = spec.fn(ctx)
        except TaskCancelled as exc:
            if ctx.cancelled:
                outcome = _Outcome(S.CANCELLED, None, ctx.progress)
            elif ctx.interrupted and isinstance(exc, TaskInterrupted):
                outcome = _Outcome(S.RESTORING, None, ctx.progress)
            else:
                outcome = self._failure(row, ctx, exc)
        except BaseException as exc:  # noqa: BLE001 - a task's error, whatever it is, is its outcome
            outcome = self._failure(row, ctx, exc)
        else:
            outcome = self._success(value, ctx)
        self._finish(task_id, outcome)

    def _success(self, value: Any, ctx: TaskContext) -> _Outcome:
        try:
            text, size = _encode_json(value, "result")
        except Exception as exc:  # noqa: BLE001 - not JSON, or a value whose own methods raise: the
            # task fails with the reason (escaping here would leave it RUNNING with no worker)
            return _Outcome(S.FAILED, _error_text(exc), ctx.progress)
        if size > self.max_result_size:
            return _Outcome(S.FAILED, _error_text(LimitExceeded("result", size, self.max_result_size)), ctx.progress)
        return _Outcome(S.SUCCESS, text, ctx.progress)

    def _failure(self, row: dict[str, Any], ctx: TaskContext, exc: BaseException) -> _Outcome:
        text = _error_text(exc)
        if len(text.encode("utf-8")) > self.max_result_size:
            text = text.encode("utf-8")[: self.max_result_size].decode("utf-8", "ignore")
        if row["retries"] < row["max_retries"] and not ctx.cancelled:
            delay = min(row["retry_delay"] * 2 ** min(row["retries"], 30), max(_MAX_BACKOFF, row["retry_delay"]))
            log.info("task %d failed (%s); retry %d of %d in %.3g s", ctx.task_id, text, row["retries"] + 1,
                     row["max_retries"], delay)
            return _Outcome(S.PENDING, text, ctx.progress, now_ms(self.clock) + int(delay * 1000))
        log.warning("task %d (%s) failed: %s", ctx.task_id, ctx.task_type, text, exc_info=exc)
        return _Outcome(S.FAILED, text, ctx.progress)

    def _finish(self, task_id: int, outcome: _Outcome) -> None:
        def done(ok: bool, value: Any) -> None:
            self._running.pop(task_id, None)
            if not ok:
                self._keep_unsaved(task_id, outcome)
            elif outcome.status is S.PENDING and value:
                self._executor.call_at(outcome.run_at / 1000.0, self._wake_due)  # type: ignore[operator]

        if outcome.status is S.CANCELLED:
            # someone asked for this and is watching for it: commit now (about a millisecond), not
            # with the next write or the flusher's next look (up to 16 ms after a burst)
            try:
                value = self._store.write(_op_finish, self.node, task_id, outcome, savepoint=False)
            except Exception as exc:  # noqa: BLE001 - whatever stopped the write, the outcome is kept
                done(False, exc)
            else:
                done(True, value)
            return
        try:
            self._store.write_async(_op_finish, self.node, task_id, outcome, savepoint=False, callback=done)
        except StoreError:
            self._keep_unsaved(task_id, outcome)

    def _keep_unsaved(self, task_id: int, outcome: _Outcome) -> None:
        log.error("could not record the outcome of task %d (%s); it is kept in memory and written at the "
                  "next poll that can", task_id, outcome.status.name)
        self._unsaved[task_id] = outcome

    def _on_commit(self, changes: _List[tuple[int, Any, TaskStatus]]) -> None:
        # Runs on the committing thread, one commit at a time: the bump needs no lock. The
        # condition (and its lock) only when someone waits: under a stream of tasks nobody may.
        for _, _, to in changes:
            if to in TERMINAL:
                self._generation += 1
                if self._waiters or self._watchers:
                    with self._done:
                        if self._watchers:
                            finished = [task_id for task_id, _, status in changes if status in TERMINAL]
                            for watcher in self._watchers.values():
                                watcher.extend(finished)
                        self._done.notify_all()
                return

    # -------------------------------------------------------- housekeeping
    def _tick(self) -> None:
        """The periodic poll: progress, remote cancels, due PENDING tasks, claims, heartbeat, retries."""
        if self._stopping:
            if self._state is _State.STOPPING and not self._lifecycle.locked():
                self._keep_alive()  # a shutdown was interrupted: its callables still run here
            return
        for step in (self._retry_unsaved, self._redispatch, self._flush_progress, self._poll_running,
                     self._wake_due, self._claim, self._heartbeat):
            try:
                step()
            except Exception:
                log.exception("housekeeping step %s failed", step.__name__)

    def run_due(self) -> None:
        """For executors driven by the test (inline, step): run one housekeeping poll and every
        timed call due by the manager's clock."""
        run = getattr(self._executor, "run_due", None)
        if run is None:
            raise ManagerStateError("run_due() is for the inline and step executors; a pool executor runs them itself")
        self._require_open()
        run(self.clock())

    def _flush_progress(self) -> None:
        dirty = [(tid, ctx, v) for tid, ctx in list(self._running.items()) if (v := ctx._unsaved_progress()) is not None]
        if not dirty:
            return

        def op(tx: Tx) -> None:
            for tid, _ctx, value in dirty:
                tx.update(tid, (S.RUNNING, S.CANCELLING), held_by=self.node, progress=value, updated=tx.now)

        self._store.write(op)
        for _tid, ctx, value in dirty:
            ctx._mark_saved(value)

    def _poll_running(self) -> None:
        """Notice cancels requested by other processes for tasks running here; forget the early
        cancels (see :meth:`cancel`) that no worker took since the last poll."""
        if self._early_cancels or self._early_seen:
            # Still there a poll later: the cancel raced its task's end (the worker had finished
            # and let go of the task as the cancel looked for it), and no worker will ever take it.
            # Were one still to come, this loop delivers the cancel from the row once it registers.
            with self._cancel_lock:
                self._early_cancels -= self._early_seen
                self._early_seen = set(self._early_cancels)
        running = list(self._running)
        if not running:
            return
        T = self._store.Task
        for i in range(0, len(running), 500):
            q = T.select(T.id).where(T.id.in_(running[i : i + 500]), T.status == S.CANCELLING.value)
            for (tid,) in q.tuples():
                ctx = self._running.get(tid)
                if ctx is not None and not ctx.cancelled:
                    ctx._request_cancel()

    def _wake_due(self) -> None:
        """Move PENDING tasks whose time has come (delayed start, retry backoff) back to QUEUED."""
        if self._stopping:
            return
        T = self._store.Task
        now = now_ms(self.clock)
        while True:
            ids = self._store.ids_where(
                T.status == SQL(f"'{S.PENDING.value}'"),  # a literal: the partial index's condition
                T.run_at <= now,
                # its own, or nobody's of a type registered here (another node's type would go UNKNOWN)
                (T.owner == self.node) | (T.owner.is_null() & T.type.in_(list(self._types))),
                limit=self.WAKE_BATCH,
                order_by=T.run_at,
            )
            if not ids:
                self._wake_held_no_more()
                return

            def op(tx: Tx, ids: _List[int] = ids) -> tuple[_List[int], bool]:
                """The tasks woken, and whether a due one was held by another transaction."""
                out, held_elsewhere = [], False
                for tid in ids:
                    # a suspend (run_at cleared, still PENDING) waits for this; a row another transaction
                    # holds (PostgreSQL) is skipped: waiting for it could close a cycle of locks
                    row = tx.row(tid, lock=True)
                    if row is None:
                        held_elsewhere = held_elsewhere or tx.row(tid) is not None  # or deleted
                    elif row["status"] == S.PENDING.value and row["run_at"] is not None and row["run_at"] <= now:
                        if self._requeue(tx, row, S.PENDING):
                            out.append(tid)
                return out, held_elsewhere

            woken, held_elsewhere = self._store.write(op)
            for tid in woken:
                self._dispatch(tid)
            if held_elsewhere:  # look again soon (not at the next poll), and not at once: no spinning on it
                self._retry_wake()
                return
            self._wake_held_no_more()
            if len(ids) < self.WAKE_BATCH:
                return

    def _wake_held_no_more(self) -> None:
        """A wake-up found no due task held elsewhere: the next retry waits the least again."""
        with self._wake_retry_lock:
            self._wake_retry_delay = self.WAKE_RETRY

    def _retry_wake(self) -> None:
        """Have :meth:`_wake_due` look again a moment from now: one such call at a time (every poll
        and timed wake-up that finds the rows still held would start one more), its delay doubling
        from :attr:`WAKE_RETRY` up to ``poll_interval`` while the rows stay held."""
        with self._wake_retry_lock:
            if self._wake_retry_pending:
                return
            self._wake_retry_pending = True
            delay = self._wake_retry_delay
            self._wake_retry_delay = min(delay * 2, self.poll_interval)
        # the test executors (ManualTimer) run timed calls by the manager's clock; the others by the
        # real time, and a late call at once: from a clock behind it (a test's) the retry would come
        # due at once, again and again
        now = self.clock() if isinstance(self._executor, ManualTimer) else time.time()

        def retry() -> None:
            with self._wake_retry_lock:
                self._wake_retry_pending = False
            self._wake_due()

        try:
            self._executor.call_at(now + delay, retry)
        except BaseException:  # not scheduled: the next wake-up that finds a row held tries again
            with self._wake_retry_lock:
                self._wake_retry_pending = False
            raise

    def _claim(self) -> None:
        """Take unowned NEW or RESTORING tasks of registered types (submitted by idle managers)."""
        if not self._types:
            return
        T = self._store.Task
        rows = self._store.rows_where(
            T.status.in_([S.NEW.value, S.RESTORING.value]),
            T.owner.is_null(),
            T.type.in_(list(self._types)),
            limit=500,
        )
        if not rows:
            return

        def op(tx: Tx) -> _List[int]:
            out = []
            for row in rows:
                fresh = tx.row(row["id"])
                if fresh is None or fresh["owner"] is not None or fresh["status"] != row["status"]:
                    continue
                st = S(fresh["status"])
                if st is S.NEW:
                    if _decode_input_or_none(fresh) is _BAD:
                        self._mark_unknown(tx, fresh, st, "InvalidInput: the stored task_input is not valid JSON")
                    elif tx.move(fresh["id"], st, S.QUEUED, held_by=NOBODY, owner=self.node):
                        out.append(fresh["id"])
                elif self._requeue(tx, fresh, st):
                    out.append(fresh["id"])
            return out

        for tid in self._store.write(op):
            self._dispatch(tid)

    def _keep_alive(self) -> None:
        """The housekeeping of a node shutting down while callables still run: progress, remote
        cancels, heartbeat; no new work (no claims, no wake-ups, no take-overs)."""
        for step in (self._flush_progress, self._poll_running, functools.partial(self._heartbeat, False)):
            try:
                step()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("housekeeping of node %s while it shuts down failed", self.node)

    def _heartbeat(self, take_over: bool = True) -> None:
        """Say this node is alive; take over the tasks of any node found dead meanwhile (with
        ``take_over``)."""
        if time.monotonic() - self._last_heartbeat >= self.node_timeout / 3:
            if not self._store.heartbeat(self.node):
                # another node found this one silent for node_timeout (a stall: a suspended machine,
                # a paused process) and took it for dead; unregistered, every node starting from now
                # on would take its tasks over, the ones running here included
                self._store.register_node(self.node, now_ms(self.clock))
                log.warning("node %s was taken for dead by another node (no heartbeat for %g s): registered "
                            "it again; tasks it ran then may have been taken over and run again",
                            self.node, self.node_timeout)
            self._last_heartbeat = time.monotonic()
            if not take_over:
                return
            _alive, dead = self._store.reap_nodes(int(self.node_timeout * 1000))
            if dead:
                log.warning("node(s) %s stopped without shutting down; taking over their tasks", ", ".join(dead))
                self.restore()

    def _redispatch(self) -> None:
        """Hand the executor again the queued tasks whose start could not be written (a full disk)."""
        while self._undispatched:
            self._dispatch(self._undispatched.pop())

    def _retry_unsaved(self) -> None:
        for tid, outcome in list(self._unsaved.items()):
            try:
                self._store.write(_op_finish, self.node, tid, outcome)
            except StoreError:
                return
            self._unsaved.pop(tid, None)
            self._running.pop(tid, None)

    def __repr__(self) -> str:
        return f"<TaskManager {self._state.value} node={self.node!r} types={sorted(self._types)}>"


# ----------------------------------------------------------------- operations
def _op_start(tx: Tx, node: str, task_id: int) -> dict[str, Any] | None:
    """QUEUED -> RUNNING; the row to run, or None if the task is no longer queued here (another
    node took it over: see "Fenced by the owner" in the module docs)."""
    return tx.move_returning(task_id, S.QUEUED, S.RUNNING, held_by=node, ran=1)


def _op_insert(tx: Tx, mgr: TaskManager, rows: _List[dict[str, Any]], direct: int, pending: bool,
               dispatch: bool) -> tuple[_List[int], bool]:
    """A submit's rows: waiting PENDING (a delay), NEW (an idle manager), or owned by this node,
    the first ``direct`` straight to RUNNING (a worker is reserved for each) and the rest QUEUED.
    Returns the ids, and whether the tasks are this node's to run.

    A shutdown that began after the submit saw the node running hands back what the node owns
    in a transaction of its own; if this one comes after it, tasks written as the node's would
    stay QUEUED with an owner that no longer runs anything and that no node would ever take for
    dead. So the flag is read here, in the transaction: once it is up, the tasks are written as
    an idle manager writes them (unowned NEW, or PENDING), for any started node to claim."""
    if dispatch and mgr._stopping:
        dispatch = False
        for row in rows:
            row["owner"], row["ran"] = None, 0
    if pending:
        ids = tx.insert_many(rows, _PATH_PENDING)
    elif not dispatch:
        ids = tx.insert_many(rows)
    elif direct == len(rows):
        ids = tx.insert_many(rows, _PATH_RUNNING)
    else:
        ids = (tx.insert_many(rows[:direct], _PATH_RUNNING) if direct else []) + tx.insert_many(rows[direct:],
                                                                                                _PATH_QUEUED)
    return ids, dispatch


def _op_start_later(tx: Tx, mgr: TaskManager, task_id: int) -> bool | None:
    """QUEUED -> RUNNING if a worker is free now (True); False when the task is no longer queued,
    None when no worker is free. The reservation is taken once: a batch run again (a lock retry,
    an operation that refused after writing) does not take a second one."""
    if not mgr._later[task_id]:
        # the calls waiting in the executor's line came after this task (it was tried only while
        # none waited): they do not count against it
        if mgr._stopping or not mgr._reserve_fn(1, ahead_of_queue=True):  # type: ignore[misc, call-arg]
            return None
        mgr._later[task_id] = True
    return tx.move(task_id, S.QUEUED, S.RUNNING, held_by=mgr.node, ran=1)


def _op_finish(tx: Tx, node: str, task_id: int, outcome: _Outcome) -> bool:
    """Record a callable's outcome; False when the record is gone or no longer this node's run."""
    if _record_outcome(tx, node, task_id, outcome):
        return True
    row = tx.row(task_id)  # only on this rare path: say why, unless the record was deleted (as asked)
    if row is not None and row["owner"] != node:
        log.warning("the outcome of task %d (%s) on this node (%s) is dropped: the task is now %s and %s; "
                    "another node took it over after this one missed its heartbeats for node_timeout",
                    task_id, outcome.status.name, node, str(row["status"]).upper(),
                    f"owned by {row['owner']}" if row["owner"] else "owned by no node")
    return False


def _record_outcome(tx: Tx, node: str, task_id: int, outcome: _Outcome) -> bool:
    fields: dict[str, Any] = {"result": outcome.result, "progress": outcome.progress}
    target = outcome.status
    if target is S.RESTORING:  # interrupted by a shutdown: handed back, to run again (a re-run: ran stays 1)
        if tx.move(task_id, S.RUNNING, S.RESTORING, held_by=node, owner=None, **fields):
            return True
        return tx.move(task_id, S.CANCELLING, S.CANCELLED, held_by=node, **fields)
    if target is S.PENDING:
        if tx.move(task_id, S.RUNNING, S.PENDING, held_by=node, run_at=outcome.run_at, **fields):
            return True
        target = S.FAILED  # a cancel came first: no retry for a task being cancelled
    elif target is S.CANCELLED:
        # the callable obeyed a cancel; the row may still say RUNNING only if the cancel was not durable
        tx.move(task_id, S.RUNNING, S.CANCELLING, held_by=node)
        return tx.move(task_id, S.CANCELLING, S.CANCELLED, held_by=node, **fields)
    if tx.move(task_id, S.RUNNING, target, held_by=node, **fields):
        return True
    return tx.move(task_id, S.CANCELLING, target, held_by=node, **fields)


_BAD = object()


def _decode_input(row: dict[str, Any]) -> Any:
    try:
        return None if row["input"] is None else json.loads(row["input"])
    except ValueError:
        raise InvalidArgument(f"task {row['id']} has a task_input that is not valid JSON") from None


def _decode_input_or_none(row: dict[str, Any]) -> Any:
    try:
        return _decode_input(row)
    except InvalidArgument:
        return _BAD


def _status(row: dict[str, Any]) -> TaskStatus | None:
    try:
        return TaskStatus(row["status"])
    except ValueError:
        return None


def _damaged_to_unknown(tx: Tx, row: dict[str, Any]) -> TaskStatus:
    """The row's status; a status that is not one of the twelve is first recorded as UNKNOWN."""
    st = _status(row)
    if st is None:
        raw = row["status"]
        tx.move_from_stored(row["id"], raw, S.UNKNOWN, result=f"DamagedRecord: stored status {raw!r} is not valid")
        row["status"] = S.UNKNOWN.value
        return S.UNKNOWN
    return st


_UNREGISTERED = "UnknownTaskType: "


def _unregistered_text(task_type: str) -> str:
    return (
        f"{_UNREGISTERED}task type {task_type!r} is not registered in the process that restored it; "
        "register it and call resume() on the task (or restart)"
    )


def _check_retries(max_retries: object, retry_delay: object) -> None:
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise InvalidArgument(f"max_retries must be a non-negative integer, got {max_retries!r}")
    if isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float)) or not 0 <= retry_delay < 1e9:
        raise InvalidArgument(f"retry_delay must be a non-negative number of seconds, got {retry_delay!r}")
