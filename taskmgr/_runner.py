"""The run of one task and its outcome.

Owns: the runs in progress on this node (their contexts), cancels that reach a
run before its worker registered it, progress not yet written, and outcomes
the store could not take (kept in memory, written by the next poll).

Threads: :meth:`Runner.run` on an executor worker, one per task; the others
on the housekeeping poll or a caller's thread. ``_runs_lock`` guards the runs
and the early cancels.

Invariants: a run's every write is fenced by this node's name (see
:mod:`taskmgr._moves`); whatever fails before, around or after the callable
(an input that cannot be decoded here, a type no longer registered, an
outcome that cannot be encoded) ends the run with an outcome, never leaves
it RUNNING with no worker; one run of a task at a time on a node.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from . import _moves as moves
from ._codec import decode_input, encode_json, error_text
from ._registry import TaskType
from .context import TaskContext, mark_saved, request_cancel, request_interrupt, unsaved_progress
from .errors import InvalidArgument, LimitExceeded, StoreError, TaskCancelled, TaskInterrupted
from .status import TaskStatus
from .store import Store, now_ms

log = logging.getLogger(__name__)

S = TaskStatus
#: the longest backoff between two retries, seconds
MAX_BACKOFF = 3600.0


class Runner:
    """Runs tasks' callables for one node and records how each run ended."""

    def __init__(self, store: Store, node: str, types: Mapping[str, TaskType], *, max_result_size: int,
                 clock: Callable[[], float], retry_due: Callable[[float], None]) -> None:
        self._store = store
        self._node = node
        self._types = types
        self._max_result_size = max_result_size
        self._clock = clock
        self._retry_due = retry_due  # called with the time (seconds) a retried task comes due
        self._runs: dict[int, TaskContext] = {}
        self._runs_lock = threading.Lock()  # guards _runs and _early
        #: tasks of this node cancelled while RUNNING before their worker registered them, and those
        #: of them already there at the last poll
        self._early: tuple[set[int], set[int]] = (set(), set())
        self._unsaved: dict[int, moves.Outcome] = {}

    # ------------------------------------------------------------------ runs
    def run(self, task_id: int, row: dict[str, Any]) -> None:
        """Run a task its caller moved to RUNNING (``row``: its row as committed)."""
        try:
            ctx = self._context(task_id, row)
        except BaseException as exc:  # noqa: BLE001 - a run that cannot begin still ends
            self._finish(task_id, self._cannot_run(row, exc))
            return
        if ctx is None:
            return
        try:
            outcome = self._call(ctx, row)
        except BaseException as exc:  # noqa: BLE001 - a failure around the callable (its outcome's own)
            outcome = moves.Outcome(S.FAILED, error_text(exc), ctx.progress)
        self._finish(task_id, outcome)

    def _context(self, task_id: int, row: dict[str, Any]) -> TaskContext | None:
        """The run's context, registered; None when an earlier run of the task still goes on here."""
        spec = self._types[row["type"]]
        ctx = TaskContext(task_id, spec.name, row["name"], decode_input(row), graph=row["graph"],
                          graphspace=row["graphspace"], retries=row["retries"], progress=row["progress"])
        with self._runs_lock:
            if task_id in self._runs:
                # This node was taken for dead, the task taken over and handed back, and the node
                # claimed it again: both runs would write as this node. The first one's outcome counts.
                log.warning("task %d is already running on this node (%s), from before it was taken for dead: "
                            "not starting it a second time", task_id, self._node)
                return None
            self._runs[task_id] = ctx
            early, _seen = self._early
            if task_id in early:
                early.discard(task_id)
                request_cancel(ctx)
        return ctx

    def _cannot_run(self, row: dict[str, Any], exc: BaseException) -> moves.Outcome:
        stored = row.get("progress")
        progress = stored if isinstance(stored, int) else 0
        if isinstance(exc, KeyError):  # its type is not registered here (any more): for a node that has it
            log.warning("task %s of type %r cannot run on node %s, which does not register it: handed back",
                        row.get("id"), row.get("type"), self._node)
            return moves.Outcome(S.RESTORING, None, progress)
        if isinstance(exc, InvalidArgument):
            text = f"InvalidInput: {exc}"
        else:
            text = f"the run could not begin: {error_text(exc)}"
        log.warning("task %s failed before its callable ran: %s", row.get("id"), text)
        return moves.Outcome(S.FAILED, text, progress)

    def _call(self, ctx: TaskContext, row: dict[str, Any]) -> moves.Outcome:
        spec = self._types[row["type"]]
        try:
            value = spec.fn(ctx)
        except TaskCancelled as exc:
            if ctx.cancelled:
                return moves.Outcome(S.CANCELLED, None, ctx.progress)
            if ctx.interrupted and isinstance(exc, TaskInterrupted):
                return moves.Outcome(S.RESTORING, None, ctx.progress)
            return self._failure(row, ctx, exc)
        except BaseException as exc:  # noqa: BLE001 - a task's error, whatever it is, is its outcome
            return self._failure(row, ctx, exc)
        return self._success(value, ctx)

    def _success(self, value: Any, ctx: TaskContext) -> moves.Outcome:
        try:
            text, size = encode_json(value, "result")
        except Exception as exc:  # noqa: BLE001 - not JSON, or a value whose own methods raise
            return moves.Outcome(S.FAILED, error_text(exc), ctx.progress)
        if size > self._max_result_size:
            return moves.Outcome(S.FAILED, error_text(LimitExceeded("result", size, self._max_result_size)),
                                 ctx.progress)
        return moves.Outcome(S.SUCCESS, text, ctx.progress)

    def _failure(self, row: dict[str, Any], ctx: TaskContext, exc: BaseException) -> moves.Outcome:
        text = error_text(exc)
        if len(text.encode("utf-8")) > self._max_result_size:
            text = text.encode("utf-8")[: self._max_result_size].decode("utf-8", "ignore")
        if row["retries"] < row["max_retries"] and not ctx.cancelled:
            delay = min(row["retry_delay"] * 2 ** min(row["retries"], 30), max(MAX_BACKOFF, row["retry_delay"]))
            log.info("task %d failed (%s); retry %d of %d in %.3g s", ctx.task_id, text, row["retries"] + 1,
                     row["max_retries"], delay)
            return moves.Outcome(S.PENDING, text, ctx.progress, now_ms(self._clock) + int(delay * 1000))
        log.warning("task %d (%s) failed: %s", ctx.task_id, ctx.task_type, text, exc_info=exc)
        return moves.Outcome(S.FAILED, text, ctx.progress)

    def _finish(self, task_id: int, outcome: moves.Outcome) -> None:
        def done(ok: bool, value: Any) -> None:
            with self._runs_lock:
                self._runs.pop(task_id, None)
            if not ok:
                self._keep_unsaved(task_id, outcome)
            elif outcome.status is S.PENDING and value and outcome.run_at is not None:
                self._retry_due(outcome.run_at / 1000.0)

        if outcome.status is S.CANCELLED:
            # someone asked for this and is watching: commit now, not with the next write
            try:
                value = self._store.write(moves.finish, self._node, task_id, outcome, savepoint=False)
            except Exception as exc:  # noqa: BLE001 - whatever stopped the write, the outcome is kept
                done(False, exc)
            else:
                done(True, value)
            return
        try:
            self._store.write_async(moves.finish, self._node, task_id, outcome, savepoint=False, callback=done)
        except StoreError:
            self._keep_unsaved(task_id, outcome)

    def _keep_unsaved(self, task_id: int, outcome: moves.Outcome) -> None:
        log.error("could not record the outcome of task %d (%s); it is kept in memory and written at the "
                  "next poll that can", task_id, outcome.status.name)
        self._unsaved[task_id] = outcome

    # ------------------------------------------------------------------ the node's view
    @property
    def busy(self) -> set[int]:
        """Tasks this node is running, or ran and has not recorded yet."""
        with self._runs_lock:
            return set(self._runs) | set(self._unsaved)

    def is_running(self, task_id: int) -> bool:
        return task_id in self._runs

    @property
    def early_cancels(self) -> set[int]:
        """Cancels kept for runs whose worker has not registered them yet (a copy)."""
        with self._runs_lock:
            return set(self._early[0])


    def cancel(self, task_id: int) -> None:
        """Tell a run of this node that its task was cancelled (now, or as its worker registers it)."""
        with self._runs_lock:
            ctx = self._runs.get(task_id)
            if ctx is None:
                self._early[0].add(task_id)
        if ctx is not None:
            request_cancel(ctx)

    def interrupt_all(self) -> None:
        """Ask every running callable to stop, for a shutdown."""
        with self._runs_lock:
            contexts = list(self._runs.values())
        for ctx in contexts:
            request_interrupt(ctx)

    def poll_cancels(self) -> None:
        """Deliver cancels requested by other processes; forget early cancels that no worker took
        since the last poll (they raced their task's end)."""
        with self._runs_lock:
            early, seen = self._early
            if early or seen:
                early -= seen
                self._early = (early, set(early))
            running = list(self._runs)
        if not running:
            return
        for tid in self._store.cancelling_ids(running):
            ctx = self._runs.get(tid)
            if ctx is not None and not ctx.cancelled:
                request_cancel(ctx)

    def flush_progress(self) -> None:
        """Write the progress the callables set since the last flush."""
        with self._runs_lock:
            contexts = list(self._runs.items())
        dirty = [(tid, ctx, v) for tid, ctx in contexts if (v := unsaved_progress(ctx)) is not None]
        if not dirty:
            return
        self._store.write(moves.save_progress, self._node, [(tid, v) for tid, _ctx, v in dirty])
        for _tid, ctx, value in dirty:
            mark_saved(ctx, value)

    def retry_unsaved(self) -> None:
        """Write the outcomes the store could not take when they came."""
        for tid, outcome in list(self._unsaved.items()):
            try:
                self._store.write(moves.finish, self._node, tid, outcome)
            except StoreError:
                return
            self._unsaved.pop(tid, None)
            with self._runs_lock:
                self._runs.pop(tid, None)
