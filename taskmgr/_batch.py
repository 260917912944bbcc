"""One batch of operations in one transaction: savepoints, retries, and the truth on an interrupt.

Owns :class:`Op` (one queued operation and its outcome) and
:class:`BatchRunner`, which runs a batch in one ``BEGIN IMMEDIATE`` (SQLite)
or ``BEGIN`` transaction on the calling thread's connection and commits once.

Invariants:

- Operations fail alone. Each runs in a savepoint of its own; one that
  refuses with a :class:`~taskmgr.errors.TaskManagerError` is rolled back to
  it and its caller gets the error. One declared ``savepoint=False`` promises
  to refuse only before it writes; breaking the promise costs the batch a
  second run, with the savepoint. Any other exception rolls the batch back and
  its operations are replayed one by one, so only the guilty one fails.
- A database that stays locked is retried a bounded number of times, then
  reported as :class:`~taskmgr.errors.StoreError`; nothing was written.
- An interrupt tells the truth: before the ``COMMIT`` went through every
  operation fails; once it went through every one is told it committed.
- Deferred calls run just before the ``COMMIT``; listeners hear the changes
  after it.

Entered by the thread leading a batch (one at a time), or by the holder of
the synchronous mode's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import peewee

from ._models import now_ms
from ._sql import Statements, wrap_db_errors
from ._tx import COMMITTING, ROLLED_BACK, Tx
from .errors import StoreError, TaskManagerError
from .status import TaskStatus

log = logging.getLogger(__name__)

Listener = Callable[[list[tuple[int, Any, TaskStatus]]], None]


class Op:
    """One queued operation, and once its batch is over, its outcome."""

    __slots__ = ("fn", "args", "savepoint", "callback", "event", "at", "ok", "value")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], savepoint: bool,
                 callback: Callable[[bool, Any], None] | None = None) -> None:
        self.fn = fn
        self.args = args
        self.savepoint = savepoint
        self.callback = callback
        #: held while a caller waits on another thread's commit, released when the batch is over (a
        #: bare lock: a threading.Event is a Condition built in Python, and its creation, wait and
        #: set cost a waiting writer several microseconds more)
        self.event: Any = None
        self.at = 0.0  # when an asynchronous one was queued (monotonic)
        self.ok: bool | None = None  # None until its batch is over
        self.value: Any = None

    def resolve(self, ok: bool, value: Any) -> None:
        self.ok, self.value = ok, value
        if self.event is not None:
            self.event.release()
        if self.callback is not None:
            try:
                self.callback(ok, value)
            except Exception:  # pragma: no cover - a callback bug must not break the batch's other callers
                log.exception("task store callback failed")

    def result(self) -> Any:
        if self.ok:
            return self.value
        raise self.value


class _Unguarded(Exception):
    """An operation declared without a savepoint refused after it had written: the batch is run
    again, that operation in a savepoint this time."""


class BatchRunner:
    """Runs batches on the calling thread's connection (see the module docs). ``tuning`` is where
    ``LOCK_RETRIES`` is read at each use (the store)."""

    def __init__(self, sql: Statements, clock: Callable[[], float], deferred: Any, tuning: Any,
                 on_commit: Callable[[], None] | None) -> None:
        self._sql = sql
        self._clock = clock
        self._deferred = deferred  # DeferredCalls: run just before each COMMIT
        self._tuning = tuning
        self._on_commit = on_commit  # told of each commit (the checkpointer counts them)
        self.listeners: list[Listener] = []

    def close_connection(self) -> None:
        """Close the calling thread's connection (a thread of the store's own, as it ends)."""
        if not self._sql.db.is_closed():
            self._sql.db.close()

    def run(self, batch: list[Op]) -> None:
        """Run ``batch`` in one transaction and resolve each operation."""
        attempt = 0
        # the attempt under way, (tx, outcomes) as its operations run: what an interrupt finds (below)
        box: list[tuple[Tx, list[tuple[bool, Any]]]] = []
        try:
            while True:
                box.clear()
                try:
                    self._attempt(batch, box)
                    break
                except _Unguarded:
                    continue  # the guilty operation now has its savepoint
                except peewee.OperationalError as exc:
                    if not _lock_error(exc):
                        return self._split_or_fail(batch, exc)
                    attempt += 1
                    if attempt <= self._tuning.LOCK_RETRIES:
                        log.warning("task store %s, retrying (%d/%d)", _lock_kind(exc), attempt,
                                    self._tuning.LOCK_RETRIES)
                        continue
                    return _fail(batch, self._lock_failure(exc))
                except Exception as exc:  # a database error or a bug: find the guilty operation
                    return self._split_or_fail(batch, exc)
            tx, outcomes = box[0]
            if self._on_commit is not None:
                self._on_commit()
            for op, (ok, value) in zip(batch, outcomes):
                op.resolve(ok, value)
            if tx.changes:
                for listener in self.listeners:
                    try:
                        listener(tx.changes)
                    except Exception:  # pragma: no cover - a listener bug must not fail the batch's callers
                        log.exception("task store listener failed")
        except BaseException:
            # An interrupt (KeyboardInterrupt, delivered to the thread leading) once the COMMIT went
            # through, as it returned or while the batch was being resolved: every operation is
            # told its outcome, as committed, before the interrupt goes on.
            if box and box[0][0].committed():
                for op, (ok, value) in zip(batch, box[0][1]):
                    if op.ok is None:
                        op.resolve(ok, value)
            raise

    def _lock_failure(self, exc: BaseException) -> StoreError:
        tries = self._tuning.LOCK_RETRIES + 1
        if "deadlock detected" in str(exc):
            err = StoreError(f"the task database aborted the write as a deadlock {tries} times in a row (row "
                             "locks taken in opposite orders by another node); nothing was written")
        else:
            err = StoreError("the task database stayed locked: another connection held the write lock "
                             f"through {tries} busy timeouts; nothing was written")
        err.__cause__ = exc
        return err

    def _split_or_fail(self, batch: list[Op], exc: BaseException) -> None:
        if len(batch) > 1:
            for op in batch:
                self.run([op])
            return
        if isinstance(exc, peewee.DatabaseError):
            if "full" in str(exc):
                text = (f"the task database is full ({exc}): nothing was written; free disk space "
                        "(or raise SQLite's max_page_count) and retry")
            else:
                text = f"the task database refused the write: {exc}"
            err: BaseException = StoreError(text)
            err.__cause__ = exc
        else:
            err = exc
        _fail(batch, err)

    def _attempt(self, batch: list[Op], box: list[tuple[Tx, list[tuple[bool, Any]]]]) -> None:
        """Run a batch in one transaction, each operation in a savepoint; commit once. The
        transaction and the operations' outcomes go in ``box`` as they come (see :meth:`run`).

        The transaction is managed by hand rather than with peewee's ``atomic``: SQLite rolls a
        transaction back by itself on some errors (a full disk), and ``atomic`` would then answer
        with "cannot rollback - no transaction is active", hiding the real error.
        """
        sql = self._sql
        cursor = sql.db.cursor()
        tx = Tx(sql, cursor)
        outcomes: list[tuple[bool, Any]] = []
        box.append((tx, outcomes))
        execute = tx.control
        with wrap_db_errors:  # the driver's errors become peewee's, as execute_sql would make them
            try:
                execute("BEGIN IMMEDIATE" if sql.is_sqlite else "BEGIN")
                # the time of the batch's changes, taken once SQLite's write lock is held: a batch that
                # waited for another process's commit is not dated before it
                tx.now = now_ms(self._clock)
                for op in batch:
                    if not op.savepoint:
                        wmark = tx.writes
                        try:
                            outcomes.append((True, op.fn(tx, *op.args)))
                        except TaskManagerError as exc:
                            if tx.writes != wmark:
                                op.savepoint = True  # it wrote before refusing: only a savepoint undoes that
                                raise _Unguarded() from exc
                            outcomes.append((False, exc))
                        continue
                    mark = len(tx.changes)
                    execute("SAVEPOINT taskmgr_op")
                    try:
                        outcomes.append((True, op.fn(tx, *op.args)))
                    except TaskManagerError as exc:  # refused: undo whatever it wrote
                        execute("ROLLBACK TO SAVEPOINT taskmgr_op")
                        del tx.changes[mark:]
                        outcomes.append((False, exc))
                    execute("RELEASE SAVEPOINT taskmgr_op")
                if self._deferred.calls:
                    self._deferred.run()
                tx.state = COMMITTING
                execute("COMMIT")
            except BaseException as exc:
                if not isinstance(exc, Exception) and tx.committed():
                    raise  # an interrupt as the COMMIT returned: committed (see run)
                tx.state = ROLLED_BACK
                try:
                    execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - SQLite may have rolled it back already (a full disk)
                    pass
                raise


def _lock_error(exc: BaseException) -> bool:
    """Whether a driver error is a lock that may clear: SQLite's locked or busy database, or a
    deadlock PostgreSQL broke by aborting this transaction (run again, it usually goes through)."""
    text = str(exc)
    return "deadlock detected" in text or "locked" in text or "busy" in text


def _lock_kind(exc: BaseException) -> str:
    return "deadlocked with another transaction" if "deadlock detected" in str(exc) else "locked"


def _fail(batch: list[Op], err: BaseException) -> None:
    for op in batch:
        op.resolve(False, err)
