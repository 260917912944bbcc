"""The group-commit engine: one queue of operations, led by the writers themselves.

Owns the write queue, the leader, the flusher thread and the deferred calls.
The first caller of :meth:`GroupCommit.write` to find nobody committing
becomes the *leader*: on its own thread and connection it takes every
operation queued and runs them in one transaction (see
:class:`~taskmgr._batch.BatchRunner`), commits once, resolves them, and
keeps leading while callers wait. An asynchronous write (``write_async``)
only queues: the next leader carries it, or the flusher commits it once it
has waited ``LINGER`` seconds (up to ``LINGER_MAX`` while other writes keep
carrying the queue). :meth:`defer` hands the leader a call to make just
before its next ``COMMIT`` while writes come as a stream.

Invariants: at most one thread leads at a time (``_leader``, under
``_queue_lock``); a caller of :meth:`write` returns only once its batch is
over; nothing queued is left behind by :meth:`close`. Entered by every
thread that writes, by the flusher thread, and by the leader's callbacks
(which may write again: they run the batch themselves).
"""

from __future__ import annotations

import logging
import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from ._batch import BatchRunner, Op
from .errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")


class DeferredCalls:
    """Calls waiting for the next commit, and whether commits come as a stream."""

    def __init__(self) -> None:
        self.calls: deque[tuple[float, Callable[[], None]]] = deque()  # (when deferred, call)
        self._last_commit = 0.0  # when the last commit a caller waited for ended (monotonic)
        self._gap = float("inf")  # and how long after the one before it

    def note_waited_commit(self) -> None:
        """A commit that a caller waited for just ended (the leader's)."""
        now = time.monotonic()
        self._gap, self._last_commit = now - self._last_commit, now

    def in_stream(self, defer_max: float) -> bool:
        """Whether the last two commits callers waited for were at most ``defer_max`` apart."""
        return self._gap <= defer_max

    def run(self, before: float | None = None) -> None:
        """Run the deferred calls (with ``before``, those deferred before that time)."""
        calls = self.calls
        while calls and (before is None or calls[0][0] < before):
            try:
                _at, fn = calls.popleft()  # atomic: the leader and the flusher may both be here
            except IndexError:
                return
            try:
                fn()
            except Exception:  # pragma: no cover - a deferred call's bug must not break a commit
                log.exception("deferred call failed")


class SyncCommit:
    """``group_commit=False``: each operation runs at once on the calling thread, in its own
    transaction, under one lock (the deterministic mode behind the inline executor)."""

    def __init__(self, runner: BatchRunner) -> None:
        self._runner = runner
        self._run_lock = threading.Lock()  # one transaction at a time
        self.closed = False

    def write(self, fn: Callable[..., T], args: tuple[Any, ...], savepoint: bool) -> T:
        if self.closed:
            raise StoreError("the task store is closed")
        op = Op(fn, args, savepoint)
        with self._run_lock:
            self._runner.run([op])
        return op.result()  # type: ignore[no-any-return]

    def write_async(self, fn: Callable[..., Any], args: tuple[Any, ...], savepoint: bool,
                    callback: Callable[[bool, Any], None] | None) -> None:
        if self.closed:
            raise StoreError("the task store is closed")
        with self._run_lock:
            self._runner.run([Op(fn, args, savepoint, callback)])

    def defer(self, fn: Callable[[], None]) -> None:
        fn()

    def leading_here(self) -> bool:
        return False

    @property
    def queued(self) -> int:
        return 0

    @property
    def committing(self) -> bool:
        return self._run_lock.locked()

    def threads(self) -> list[threading.Thread]:
        return []

    def close(self) -> None:
        self.closed = True


class ReadOnlyCommit:
    """``readonly=True``: nothing is ever written, and no thread runs."""

    def __init__(self, where: str) -> None:
        self._where = where
        self.closed = False

    def _refuse(self) -> StoreError:
        return StoreError(f"the task store at {self._where} was opened read-only: it cannot write (open it "
                          "without readonly=True to write)")

    def write(self, fn: Callable[..., T], args: tuple[Any, ...], savepoint: bool) -> T:
        raise self._refuse()

    def write_async(self, fn: Callable[..., Any], args: tuple[Any, ...], savepoint: bool,
                    callback: Callable[[bool, Any], None] | None) -> None:
        raise self._refuse()

    def defer(self, fn: Callable[[], None]) -> None:
        fn()  # no commit will come

    def leading_here(self) -> bool:
        return False

    queued = 0
    committing = False

    def threads(self) -> list[threading.Thread]:
        return []

    def close(self) -> None:
        self.closed = True


class GroupCommit:
    """Concurrent writers share transactions (see the module docs). ``tuning`` is where the
    knobs are read at each use (``LINGER``, ``LINGER_MAX``, ``FLUSHER_IDLE``, ``DEFER_MAX``,
    ``MAX_BATCH``: the store, whose class or instance a host or a test may set them on)."""

    def __init__(self, runner: BatchRunner, deferred: DeferredCalls, tuning: Any) -> None:
        self._runner = runner
        self._deferred = deferred
        self._tuning = tuning
        self._queue_lock = threading.Lock()  # guards the queue, its count of waiters and the leader
        self._flusher_wake = threading.Condition(self._queue_lock)  # wakes an idle flusher
        self._queue: deque[Op] = deque()
        self._waiting = 0  # queued operations whose caller waits
        self._leader: int | None = None  # the ident of the thread leading a batch, None when none is
        self._flusher_idle = False
        self.closed = False
        self._flusher = threading.Thread(target=self._flusher_loop, name="taskmgr-flusher", daemon=True)
        self._flusher.start()

    # ------------------------------------------------------------------ writes
    def write(self, fn: Callable[..., T], args: tuple[Any, ...], savepoint: bool) -> T:
        """Queue ``fn(tx, *args)`` and return its result once its batch is committed."""
        op = Op(fn, args, savepoint)
        if self.closed:
            raise StoreError("the task store is closed")
        me = threading.get_ident()
        if self._leader == me:  # a callback of the batch just committed writes again
            self._runner.run([op])
            return op.result()  # type: ignore[no-any-return]
        with self._queue_lock:
            self._queue.append(op)
            self._waiting += 1
            if self._leader is not None:
                op.event = wait = _allocate_lock()
                wait.acquire()
                batch = None
            else:  # lead, starting with what is queued now
                self._leader = me
                batch = self._take()
        if batch is None:
            wait.acquire()  # released by the leader once the batch is over
        else:
            self._lead(batch)
        return op.result()  # type: ignore[no-any-return]

    def write_async(self, fn: Callable[..., Any], args: tuple[Any, ...], savepoint: bool,
                    callback: Callable[[bool, Any], None] | None) -> None:
        """Queue ``fn(tx, *args)`` for the next batch, without waiting; ``callback`` hears the
        outcome."""
        op = Op(fn, args, savepoint, callback)
        if self.closed:
            raise StoreError("the task store is closed")
        op.at = time.monotonic()
        with self._queue_lock:
            self._queue.append(op)
            if self._flusher_idle:
                self._flusher_wake.notify()

    def defer(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` just before the next commit, or at once when writes are not a stream."""
        if self.closed or not self._deferred.in_stream(self._tuning.DEFER_MAX):
            fn()
            return
        with self._queue_lock:
            self._deferred.calls.append((time.monotonic(), fn))
            if self._flusher_idle:
                self._flusher_wake.notify()

    def leading_here(self) -> bool:
        """Whether the calling thread is leading a batch."""
        return self._leader == threading.get_ident()

    @property
    def queued(self) -> int:
        """Operations waiting in the queue for a batch."""
        return len(self._queue)

    @property
    def committing(self) -> bool:
        """Whether a thread is leading a batch now."""
        return self._leader is not None

    # ------------------------------------------------------------------ the leader
    def _lead(self, batch: list[Op] | None = None, force: bool = False) -> None:
        """Run ``batch``, then batches until no caller is waiting (with ``force``, until nothing is
        queued). Called by the thread that made itself ``_leader``; clears it on the way out.
        Asynchronous operations left queued are the flusher's."""
        try:
            while True:
                if batch is None:
                    with self._queue_lock:
                        if not self._queue or not (self._waiting or force):
                            self._leader = None
                            if self._queue and self._flusher_idle:
                                self._flusher_wake.notify()
                            return
                        batch = self._take()
                self._runner.run(batch)
                batch = None
                if not force:  # a caller waited for this commit: a stream is commits callers wait for
                    self._deferred.note_waited_commit()
        except BaseException as exc:  # the leader was interrupted (KeyboardInterrupt): fail its batch, let go
            for op in batch or ():
                if op.ok is None:
                    op.resolve(False, StoreError(f"the write was interrupted: {exc!r}"))
            with self._queue_lock:
                self._leader = None
                if self._queue:  # hand the rest to the flusher: it leads whatever is queued
                    self._flusher_wake.notify()
            raise

    def _take(self) -> list[Op]:
        """The next batch: everything queued, up to ``MAX_BATCH``. Caller holds ``_queue_lock``."""
        queue, most = self._queue, self._tuning.MAX_BATCH
        if len(queue) <= most:  # the usual case: take it all
            batch = list(queue)
            queue.clear()
            self._waiting = 0
        else:
            batch = [queue.popleft() for _ in range(most)]
            self._waiting -= sum(1 for op in batch if op.at == 0.0)
        return batch

    # ------------------------------------------------------------------ the flusher
    def _flusher_loop(self) -> None:
        """Commit asynchronous operations that nobody else committed in time, and run deferred
        calls that no commit took. Sleeps until the oldest queued operation is due; after
        ``FLUSHER_IDLE`` seconds of an empty queue, waits to be woken instead."""
        try:
            linger = self._tuning.LINGER
            quiet_since = time.monotonic()
            while True:
                with self._queue_lock:
                    step = self._flusher_look(linger, quiet_since)
                if step is None:
                    return
                lead, due_deferred, pause, linger, quiet_since, now = step
                if due_deferred:
                    tuning = self._tuning
                    self._deferred.run(before=None if self.closed else now - tuning.DEFER_MAX + 1e-9)
                if lead:
                    self._lead(force=True)
                elif not due_deferred and pause is not None:
                    time.sleep(pause)
        finally:
            self._runner.close_connection()

    def _flusher_look(self, linger: float, quiet_since: float) -> tuple[Any, ...] | None:
        """One look of the flusher, under ``_queue_lock``: whether to lead (and becomes the leader
        if so), whether deferred calls are due, how long to sleep, the next ``linger`` and quiet
        time. None once closed with nothing left. ``linger`` doubles, up to ``LINGER_MAX``, each
        time nothing is due (other writers carry the queue, and each wake-up of this thread costs
        a stream a GIL hand-off), and falls back to ``LINGER`` once the flusher has work again."""
        t = self._tuning
        now = time.monotonic()
        lead = due_deferred = False
        first = self._queue[0] if self._queue and self._leader is None else None
        if first is not None and (self.closed or first.at == 0.0 or now - first.at >= linger):
            self._leader = threading.get_ident()
            lead, linger = True, t.LINGER
        else:  # nothing of its own to do: others carry the queue, so look less often
            linger = min(linger * 2, t.LINGER_MAX)
        pause: float | None = linger if first is None else first.at + linger - now  # wake as it comes due
        calls = self._deferred.calls
        if calls:  # a deferred call no commit took in time is the flusher's
            left = calls[0][0] + t.DEFER_MAX - now
            due_deferred = left <= 0 or self.closed
            if due_deferred:  # no commit came for it: the stream is over, look often again
                linger = t.LINGER
            pause = min(pause, max(left, 0.0))  # type: ignore[type-var]
        if self._queue or calls:
            quiet_since = now
        elif self.closed:
            return None
        elif now - quiet_since >= t.FLUSHER_IDLE:
            self._flusher_idle = True
            self._flusher_wake.wait()
            self._flusher_idle = False
            return False, False, None, t.LINGER, time.monotonic(), now
        return lead, due_deferred, pause, linger, quiet_since, now

    def threads(self) -> list[threading.Thread]:
        """The engine's threads still alive (the flusher)."""
        return [self._flusher] if self._flusher.is_alive() else []

    def close(self) -> None:
        """Commit every queued write, run every deferred call, and stop the flusher."""
        if self.closed:
            return
        self.closed = True
        with self._queue_lock:
            self._flusher_wake.notify()
        self._flusher.join()  # it commits what is still queued, then stops
        self._deferred.run()  # what the flusher did not (a call deferred as it stopped)
