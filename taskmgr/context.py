"""What a running callable gets: its input, progress reporting and cancellation.

Cancellation is cooperative. Nothing kills a thread from outside; the manager
sets the context's cancel event, and the callable notices it at its next
:meth:`TaskContext.check_cancelled`, :meth:`TaskContext.sleep` or look at
:attr:`TaskContext.cancelled`. A cancel requested in this process sets the
event at once; one requested from another process sharing the store is seen
by the manager's poll, within ``poll_interval`` seconds (0.2 s by default).

A manager shut down with ``interrupt=True`` asks its running callables to
stop in the same way, but the task is not cancelled: ``check_cancelled`` and
``sleep`` raise :class:`~taskmgr.errors.TaskInterrupted` (a
:class:`~taskmgr.errors.TaskCancelled`), :attr:`TaskContext.interrupted` turns
true, and a callable that lets the exception out has its task handed back
(RESTORING) to run again on the next node. One that returns anyway ends as
what it returned.

Progress is kept in memory on every assignment and written by the manager's
poll (so at most once per ``poll_interval`` per task, however often the
callable sets it); the last value is always written with the task's final
status.
"""

from __future__ import annotations

import threading
from typing import Any

from .errors import InvalidArgument, TaskCancelled, TaskInterrupted

__all__ = ["TaskContext", "request_cancel", "request_interrupt", "unsaved_progress", "mark_saved"]

#: guards the lazy creation of a context's wake-up event (most callables never sleep: an event
#: per task cost more than a no-op callable)
_WAKE_LOCK = threading.Lock()


class TaskContext:
    """Handed to a task's callable as its only argument.

    :ivar task_id: the task's id
    :ivar task_type: its registered type
    :ivar name: its name
    :ivar graph: the graph it belongs to
    :ivar graphspace: the graphspace it belongs to
    :ivar retries: how many times it was re-run before this run
    :ivar input: the decoded input it was submitted with
    """

    __slots__ = (
        "task_id",
        "task_type",
        "name",
        "graph",
        "graphspace",
        "retries",
        "input",
        "_progress",
        "_saved_progress",
        "_wake",
        "_cancel_requested",
        "_interrupt_requested",
    )

    def __init__(
        self,
        task_id: int,
        task_type: str,
        name: str,
        input: Any,
        *,
        graph: str = "hugegraph",
        graphspace: str = "DEFAULT",
        retries: int = 0,
        progress: int = 0,
    ) -> None:
        self.task_id = task_id
        self.task_type = task_type
        self.name = name
        self.input = input
        self.graph = graph
        self.graphspace = graphspace
        self.retries = retries
        self._progress = progress
        self._saved_progress = progress
        self._wake: threading.Event | None = None  # made by the first sleep; set by a cancel or an interrupt
        self._cancel_requested = False
        self._interrupt_requested = False

    # ------------------------------------------------------------ progress
    @property
    def progress(self) -> int:
        """The task's progress: any integer the callable chooses (not bounded to 0..100)."""
        return self._progress

    @progress.setter
    def progress(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"progress must be an integer, got {value!r}")
        if not -(2**63) <= value < 2**63:
            raise InvalidArgument(f"progress must fit in 64 bits, got {value}")
        self._progress = value

    def _unsaved_progress(self) -> int | None:
        """The progress to write, or None when the stored value is current."""
        value = self._progress
        return None if value == self._saved_progress else value

    def _mark_saved(self, value: int) -> None:
        self._saved_progress = value

    # -------------------------------------------------------- cancellation
    @property
    def cancelled(self) -> bool:
        """True once cancellation of this task was requested."""
        return self._cancel_requested

    @property
    def interrupted(self) -> bool:
        """True once the manager, shutting down, asked this callable to stop (the task is not cancelled)."""
        return self._interrupt_requested

    def check_cancelled(self) -> None:
        """Raise if cancellation (or an interrupting shutdown) was requested.

        :raises TaskCancelled: when the task was cancelled.
        :raises TaskInterrupted: when the manager is shutting down.
        """
        if self._cancel_requested or self._interrupt_requested:
            self._raise()

    def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds``, waking at once if the task is cancelled (or the manager interrupts it).

        :raises TaskCancelled: when cancellation is requested before or during the sleep.
        :raises TaskInterrupted: when an interrupting shutdown is.
        """
        if self.wait(seconds):
            self._raise()

    def wait(self, seconds: float) -> bool:
        """Like :meth:`sleep`, but without raising: True when it woke (or never slept) because
        the task was cancelled or interrupted, False when ``seconds`` passed. For a callable
        that stops in its own way (cleans up, returns a partial result)."""
        if seconds < 0:
            raise InvalidArgument(f"a wait needs a non-negative number of seconds, got {seconds!r}")
        wake = self._wake
        if wake is None:
            with _WAKE_LOCK:  # a cancel that comes now either sees the event or came before the check below
                wake = self._wake
                if wake is None:
                    wake = self._wake = threading.Event()
                    if self._cancel_requested or self._interrupt_requested:
                        wake.set()
        return wake.wait(seconds)

    def _raise(self) -> None:
        if self._cancel_requested:
            raise TaskCancelled(f"task {self.task_id} was cancelled")
        raise TaskInterrupted(f"task {self.task_id} was interrupted: the task manager is shutting down")

    def _request_cancel(self) -> None:
        self._cancel_requested = True
        self._wake_sleeper()

    def _request_interrupt(self) -> None:
        self._interrupt_requested = True
        self._wake_sleeper()

    def _wake_sleeper(self) -> None:
        with _WAKE_LOCK:
            if self._wake is not None:
                self._wake.set()

    def __repr__(self) -> str:
        return f"<TaskContext task_id={self.task_id} type={self.task_type!r} progress={self._progress}>"


# The manager's side of a context: what its runner calls, kept out of the callable's way.
def request_cancel(ctx: TaskContext) -> None:
    """Tell the callable its task was cancelled (wakes a sleep at once)."""
    ctx._request_cancel()


def request_interrupt(ctx: TaskContext) -> None:
    """Ask the callable to stop for a shutdown (its task is handed back, not cancelled)."""
    ctx._request_interrupt()


def unsaved_progress(ctx: TaskContext) -> int | None:
    """The progress the store has not seen yet, or None."""
    return ctx._unsaved_progress()


def mark_saved(ctx: TaskContext, value: int) -> None:
    """Record that ``value`` was written to the store."""
    ctx._mark_saved(value)
