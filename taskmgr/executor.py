"""Where callables run: an APScheduler 3 thread pool, or inline for tests.

:class:`Executor` names everything the manager calls: run this on a worker
(``submit``, with a reserved worker or a place in line), run this at a time
or every few seconds (``call_at``, ``every``), stop (``close``, ``join``,
``shutdown``). :class:`ExecutorBase` gives the optional half its defaults.
Threads: the manager's callers submit; workers and housekeeping threads are
the pool's own.

:class:`PoolExecutor` does them with an APScheduler ``BackgroundScheduler``
and two ``ThreadPoolExecutor``\\ s: one of ``workers`` threads for task
callables, and one small pool of its own for the manager's housekeeping (the
poll that notices cross-process cancels, flushes progress and wakes delayed
tasks), so housekeeping never waits behind long tasks.

APScheduler's traps, and how they are avoided here:

* A job that waited longer than ``misfire_grace_time`` for a free thread is
  silently skipped. Every job is added with ``misfire_grace_time=None`` (no
  limit), and tasks wait in the executor's own FIFO, not in APScheduler, so
  an accepted task always runs, however long the queue.
* A job already handed to the thread pool cannot be removed. The manager never
  tries: a task cancelled or deleted while queued is skipped by its own job,
  whose first act is the compare-and-set QUEUED -> RUNNING, which then fails.
* ``max_instances`` (default 1) skips a run of a job whose previous run is
  still going. Every drain job is a job of its own, so it never applies.

:class:`InlineExecutor` runs everything on the calling thread: ``submit`` runs
the callable before it returns, timed calls wait until :meth:`run_due` is told
the time has come. Deterministic, for hosts' tests.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from .errors import InvalidArgument, ManagerStateError

__all__ = ["Executor", "ExecutorBase", "PoolExecutor", "InlineExecutor", "ManualTimer"]

log = logging.getLogger(__name__)

_UTC = _dt.UTC
_TASKS = "taskmgr-tasks"
_HOUSEKEEPING = "taskmgr-housekeeping"

# APScheduler logs every run of every job at INFO, under a logger named after the executor:
# that is several lines a second from the housekeeping poll alone. Quiet these two loggers
# (ours by name) unless the host has set their level itself.
for _alias in (_TASKS, _HOUSEKEEPING):
    _logger = logging.getLogger(f"apscheduler.executors.{_alias}")
    if _logger.level == logging.NOTSET:
        _logger.setLevel(logging.WARNING)


#: ``executor``: the PoolExecutor whose drains a pool thread runs (see PoolExecutor.in_any_worker)
_DRAIN = threading.local()


def _not_at_exit(record: logging.LogRecord) -> bool:
    """Drop APScheduler's error for a poll it could not hand to its pool because the interpreter
    is exiting (``concurrent.futures`` refuses work then): expected while a node's shutdown
    finishes at exit, which keeps the node alive by itself; a traceback would only alarm."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (isinstance(exc, RuntimeError) and "interpreter shutdown" in str(exc))


_SCHEDULER_LOG = logging.getLogger("taskmgr.scheduler")
_SCHEDULER_LOG.addFilter(_not_at_exit)


def _place(entry: tuple[int, Callable[[], None]]) -> int:
    return entry[0]


@runtime_checkable
class Executor(Protocol):
    """Everything the manager calls on an executor. :class:`ExecutorBase` gives the optional
    half (reservations, the FIFO's order, a waiting shutdown, test time) its defaults."""

    #: True when :meth:`submit` runs the callable before returning
    synchronous: bool
    #: True when timed calls run by the manager's clock, from :meth:`run_due` (test executors)
    manual_clock: bool
    #: how many calls may run at once (0: the executor does not say)
    workers: int

    @property
    def waiting(self) -> int:
        """Calls waiting in the FIFO without a reserved worker."""

    def start(self) -> None:
        """Start running submitted and timed calls."""

    def submit(self, fn: Callable[[], None], reserved: bool = False) -> None:
        """Run ``fn()`` on a worker as soon as one is free. Never drops it. ``reserved``: on a worker
        that :meth:`reserve` held for it (the manager passes it only when ``reserve`` held one)."""

    def reserve(self, n: int, *, ahead_of_queue: bool = False) -> int:
        """Hold up to ``n`` free workers for calls about to be submitted; return how many are
        held. An executor that cannot promise a free worker returns 0."""

    def release(self, n: int) -> None:
        """Give back ``n`` held workers that will not be used."""

    def mark(self) -> int:
        """The FIFO's end now, for :meth:`submit_from`."""

    def submit_from(self, fn: Callable[[], None], mark: int) -> None:
        """:meth:`submit` ``fn`` where it would be in the FIFO had it been submitted at ``mark``."""

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn()`` (on the housekeeping side) at ``when``, seconds since the epoch."""

    def every(self, seconds: float, fn: Callable[[], None]) -> None:
        """Run ``fn()`` (on the housekeeping side) every ``seconds``."""

    def close(self) -> None:
        """Stop taking calls from the FIFO; running calls go on (see :meth:`join`)."""

    def join(self, timeout: float) -> bool:
        """After :meth:`close`: wait up to ``timeout`` seconds; True once no call runs."""

    def shutdown(self, wait: bool = True) -> None:
        """Stop; with ``wait``, return only when running calls have returned."""

    def run_due(self, now: float) -> int:
        """Run the periodic calls once and the timed calls due at ``now`` (test executors)."""


class ExecutorBase:
    """The defaults of an :class:`Executor`'s optional half: no reservations, a FIFO without
    places, a shutdown that waits in :meth:`shutdown`, time from the real clock. Subclass it and
    implement ``start``, ``submit``, ``call_at``, ``every`` and ``shutdown``."""

    synchronous = False
    manual_clock = False
    workers = 0

    @property
    def waiting(self) -> int:
        return 0

    def reserve(self, n: int, *, ahead_of_queue: bool = False) -> int:
        return 0

    def release(self, n: int) -> None:
        pass

    def mark(self) -> int:
        return 0

    def submit_from(self, fn: Callable[[], None], mark: int) -> None:
        self.submit(fn)  # type: ignore[attr-defined]

    def close(self) -> None:
        pass

    def join(self, timeout: float) -> bool:
        return True

    def run_due(self, now: float) -> int:
        raise ManagerStateError("run_due() is for the inline and step executors; a pool executor runs them itself")


class PoolExecutor(ExecutorBase):
    """An APScheduler ``BackgroundScheduler`` with a pool of ``workers`` threads for tasks.

    Submitted callables wait in a FIFO of the executor's own; at most
    ``workers`` *drain jobs* take them from it. An idle drain either *polls*
    (at most :attr:`POLLERS` of them, every :attr:`POLL` seconds, until
    :attr:`STREAM_IDLE` passes without work) or *parks* (blocked on a bell
    until woken, or :attr:`LINGER` passes and it gives its thread back), so a
    task submitted to a quiet pool starts at once and one submitted in a
    stream costs its submitter no thread wake-up.

    :meth:`reserve` promises a worker to a call before it exists (the manager
    commits a task straight to RUNNING on it); reserved calls are taken first,
    and an unreserved one only while a worker is left for every open promise.
    :meth:`mark` and :meth:`submit_from` put a call back in the place it would
    have had in line. ``_pool_lock`` guards the FIFO and every counter.
    """

    synchronous = False
    #: seconds a parked drain waits to be woken before it gives its thread back
    LINGER = 0.05
    #: seconds between two looks of the polling drain at the FIFO
    POLL = 0.001
    #: how many idle drains poll at most (the others park)
    POLLERS = 1
    #: seconds of finding nothing after which the polling drain parks
    STREAM_IDLE = 0.001

    def __init__(self, workers: int = 4) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidArgument(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        # calls submitted without a reservation, each with its place in line (see submit_from)
        self._ready: deque[tuple[int, Callable[[], None]]] = deque()
        self._promised: deque[Callable[[], None]] = deque()  # calls submitted on a reservation
        self._appended = 0  # calls ever submitted to _ready: the last place in line given
        # wakes parked drains: one item per wake. A C-level queue: a drain parked on it costs a
        # semaphore, not a threading.Condition (whose Python-level waiter bookkeeping cost more
        # than a no-op task)
        self._bell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._draining = 0  # drain jobs added and not yet returned
        self._starting = 0  # of those, how many have not yet looked at the FIFO
        self._parked = 0  # of those, how many are blocked on the bell
        self._rung = 0  # wakes put on the bell and not yet taken
        self._polling = 0  # of those, how many poll the FIFO
        self._busy = 0  # callables running
        self._reserved = 0  # workers promised to calls not yet submitted
        self._pool_lock = threading.Lock()  # guards the FIFO, the counters above and the closed flag
        self._idle = threading.Condition(self._pool_lock)  # notified as callables return once closed
        self._closed = False
        self._timers_off = False  # set by shutdown(): no job is added from then on (see _add_job)
        self._scheduler = BackgroundScheduler(
            executors={
                _TASKS: ThreadPoolExecutor(workers, pool_kwargs={"thread_name_prefix": "taskmgr-worker"}),
                _HOUSEKEEPING: ThreadPoolExecutor(2, pool_kwargs={"thread_name_prefix": "taskmgr-housekeeping"}),
            },
            job_defaults={"misfire_grace_time": None, "coalesce": False, "max_instances": 1},
            timezone=_UTC,
            logger=_SCHEDULER_LOG,
        )

    def start(self) -> None:
        self._scheduler.start()

    def reserve(self, n: int, *, ahead_of_queue: bool = False) -> int:
        """Hold up to ``n`` free workers (see the class docs). ``ahead_of_queue``: for calls that
        were in line before every call now waiting unreserved in the FIFO, which then does not
        count against them."""
        with self._pool_lock:
            if self._closed:
                return 0
            waiting = len(self._promised) if ahead_of_queue else self.queued
            k = max(0, min(n, self.workers - self._busy - self._reserved - waiting))
            self._reserved += k
            return k

    def release(self, n: int) -> None:
        with self._pool_lock:
            self._reserved -= n
            if not self._closed:
                self._cover()  # calls waiting for a worker that was promised may now take it

    def submit(self, fn: Callable[[], None], reserved: bool = False) -> None:
        with self._pool_lock:
            if reserved:
                self._reserved -= 1
            if self._closed:
                return  # shutting down: the manager hands the task back instead
            if reserved:
                self._promised.append(fn)
            else:
                self._appended += 1
                self._ready.append((self._appended, fn))
            self._cover()

    def mark(self) -> int:
        """The FIFO's end now, for :meth:`submit_from`."""
        return self._appended

    def submit_from(self, fn: Callable[[], None], mark: int) -> None:
        """:meth:`submit` ``fn`` (unreserved) into the FIFO where it would be had it been submitted
        at ``mark``: ahead of the calls submitted since that are still waiting."""
        with self._pool_lock:
            if self._closed:
                return
            # the line is in order of place (each call put back goes where its place is), so the
            # calls that came after the mark are found by bisection; among calls put back at one
            # mark, the first put back goes first
            ready = self._ready
            ready.insert(bisect.bisect_right(ready, mark, key=_place), (mark, fn))
            self._cover()

    @property
    def waiting(self) -> int:
        """Calls waiting in the FIFO without a reserved worker."""
        return len(self._ready)

    @property
    def line(self) -> list[Callable[[], None]]:
        """The calls waiting without a reserved worker, in the order drains take them (a copy)."""
        with self._pool_lock:
            return [fn for _place, fn in self._ready]

    @property
    def busy(self) -> int:
        """Callables running now."""
        return self._busy

    @property
    def reserved(self) -> int:
        """Workers promised to calls not yet submitted."""
        return self._reserved

    @property
    def drains(self) -> dict[str, int]:
        """The drain jobs, by what they do now (read at one moment): ``draining`` (added and not
        returned), ``starting`` (not yet at the FIFO), ``parked``, ``rung`` (wakes not yet taken),
        ``polling``, and ``busy`` (callables running)."""
        with self._pool_lock:
            return {"draining": self._draining, "starting": self._starting, "parked": self._parked,
                    "rung": self._rung, "polling": self._polling, "busy": self._busy}

    def _spare(self) -> int:
        """Workers free beyond every open promise: how many unreserved calls may start now.
        Caller holds the lock."""
        return self.workers - self._busy - self._reserved - len(self._promised)

    def _next(self) -> Callable[[], None] | None:
        """The call a drain takes now, if any: a reserved one first. Caller holds the lock."""
        if self._promised:
            return self._promised.popleft()
        if self._ready and self._spare() > 0:
            return self._ready.popleft()[1]
        return None

    def _cover(self) -> None:
        """Wake parked drains, or add drains, for the calls that may start now and that no drain
        is about to look for (each polling, woken or starting drain counts for one). Caller holds
        the lock."""
        startable = len(self._promised) + min(len(self._ready), max(0, self._spare()))
        short = startable - self._polling - self._rung - self._starting
        while short > 0 and self._parked > self._rung:
            self._rung += 1
            self._bell.put(None)
            short -= 1
        while short > 0 and self._draining < self.workers:
            self._draining += 1
            self._starting += 1
            self._add_job(self._drain, executor=_TASKS)
            short -= 1

    def _add_job(self, fn: Callable[[], None], **kwargs: object) -> None:
        """Add an APScheduler job; the caller holds ``self._pool_lock``.

        Holding it is what makes shutdown safe: APScheduler's shutdown keeps
        its job-store lock while it waits for running jobs, so a job (or the
        thread committing for one) that called ``add_job`` then would wait on
        that lock forever. :meth:`shutdown` marks the executor closed (no
        drain job) and its timers off (no timed call) under ``self._pool_lock``
        first, so no job is added once it has begun.
        """
        self._scheduler.add_job(fn, **kwargs)

    def _drain(self) -> None:
        """Run callables from the FIFO; in between, poll or park (see the class docs)."""
        lock, ready, clock, sleep = self._pool_lock, self._ready, time.monotonic, time.sleep
        polled_since = 0.0  # when this drain started polling without finding work (0: not polling)
        _DRAIN.executor = self
        with lock:
            self._starting -= 1
        while True:
            with lock:
                fn = None if self._closed else self._next()
                if fn is not None:
                    if polled_since:
                        self._polling -= 1
                        polled_since = 0.0
                    self._busy += 1
                    self._cover()  # a poller was counted as taking this one: others may need a drain
                else:
                    if self._closed:
                        if polled_since:
                            self._polling -= 1
                        self._draining -= 1
                        return
                    if not polled_since and self._polling < self.POLLERS:  # out of work: poll while work comes
                        self._polling += 1
                        polled_since = clock()
                    elif not polled_since:  # enough drains poll: park
                        self._parked += 1
                    elif clock() - polled_since >= self.STREAM_IDLE:  # the stream is over: park
                        self._polling -= 1
                        polled_since = 0.0
                        self._parked += 1
            if fn is not None:
                try:
                    fn()
                except BaseException:
                    # but one that must not end the drain (it would hold its place in the pool for good)
                    log.exception("a task job raised")
                finally:
                    with lock:
                        self._busy -= 1
                        if self._closed:
                            self._idle.notify_all()
                continue
            if polled_since:
                sleep(self.POLL)
                continue
            try:
                self._bell.get(timeout=self.LINGER)
            except queue.Empty:
                with lock:
                    self._parked -= 1
                    if self._rung <= self._parked and (self._closed or not (self._promised or ready)):
                        self._draining -= 1  # no wake is meant for it, nothing waits: give the thread back
                        return
                    if self._rung > self._parked:  # a wake was put for it as its wait ended: take it
                        self._bell.get_nowait()
                        self._rung -= 1
                continue
            with lock:
                self._parked -= 1
                self._rung -= 1

    @property
    def queued(self) -> int:
        """Callables accepted and waiting for a thread."""
        return len(self._ready) + len(self._promised)

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        run_date = _dt.datetime.fromtimestamp(when, tz=_UTC)
        with self._pool_lock:
            # dropped once shutdown() began (a timed task's wake-up: its task was handed back), not
            # after close() alone: the node's poll goes on while its last callables run
            if not self._timers_off:
                self._add_job(fn, trigger="date", run_date=run_date, executor=_HOUSEKEEPING)

    def every(self, seconds: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` ``seconds`` after each run ends: runs never overlap, and a slow run
        delays the next one instead of making APScheduler skip (and log) a run."""

        def run() -> None:
            try:
                fn()
            finally:
                self.call_at(time.time() + seconds, run)

        self.call_at(time.time() + seconds, run)

    def close(self) -> None:
        """Stop taking callables from the FIFO; those left in it are dropped (the manager hands
        their tasks back). Running callables go on; the scheduler too (see :meth:`join`)."""
        with self._pool_lock:
            self._closed = True
            self._ready.clear()
            self._promised.clear()
            for _ in range(self._parked - self._rung):  # wake every parked drain (the poller sees the flag)
                self._rung += 1
                self._bell.put(None)

    def join(self, timeout: float) -> bool:
        """After :meth:`close`: wait up to ``timeout`` seconds for the running callables to
        return; True once none runs. The manager keeps its housekeeping going in between (its
        node is alive while they run). Not on a pool's thread (see :meth:`in_any_worker`)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    @staticmethod
    def in_any_worker() -> bool:
        """Whether the calling thread is a worker of some pool (a task's callable is calling): it
        must not wait for a pool's callables, its own pool's or, as two callables might each
        wait for the other's, another's."""
        return getattr(_DRAIN, "executor", None) is not None

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking callables from the FIFO (those left in it are dropped: the manager
        restores their tasks at its next start) and stop the scheduler."""
        self.close()
        with self._pool_lock:
            self._timers_off = True
        was_running = self._scheduler.running
        if was_running:
            # APScheduler 3 marks itself stopped before it takes its job-store lock, so a
            # round of job processing still in flight then fails to remove a finished date job
            # and kills the scheduler thread with a JobLookupError. Pause first (new rounds
            # return at once) and wait for the round in flight to let go of that lock.
            self._scheduler.pause()
            with self._scheduler._jobstores_lock:
                pass
            self._scheduler.shutdown(wait=wait)
        if wait or not was_running:
            # every drain job handed to the pool has run; one added but never handed over (the
            # scheduler was paused first, or never started) never will: stop counting it
            with self._pool_lock:
                self._draining -= self._starting
                self._starting = 0


class ManualTimer(ExecutorBase):
    """Timed and periodic calls kept until :meth:`run_due` is told the time: the
    clock-free half of the executors that tests drive."""

    manual_clock = True

    def __init__(self) -> None:
        self._timed: list[tuple[float, int, Callable[[], None]]] = []
        self._periodic: list[Callable[[], None]] = []
        self._seq = itertools.count()
        self._timer_lock = threading.Lock()

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        with self._timer_lock:
            heapq.heappush(self._timed, (when, next(self._seq), fn))

    def every(self, seconds: float, fn: Callable[[], None]) -> None:
        self._periodic.append(fn)

    def run_due(self, now: float) -> int:
        """Run the periodic calls once, then every timed call due at ``now`` (seconds since
        the epoch), on the calling thread; return how many timed calls ran."""
        for fn in list(self._periodic):
            fn()
        ran = 0
        while True:
            with self._timer_lock:
                if not self._timed or self._timed[0][0] > now:
                    return ran
                _, _, fn = heapq.heappop(self._timed)
            fn()
            ran += 1


class InlineExecutor(ManualTimer):
    """Runs every call on the calling thread; timed calls run from :meth:`run_due`."""

    synchronous = True

    def start(self) -> None:
        pass

    def submit(self, fn: Callable[[], None], reserved: bool = False) -> None:
        fn()

    def shutdown(self, wait: bool = True) -> None:
        pass
