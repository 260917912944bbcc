"""Every error the library raises, under one base class.

Catch :class:`TaskManagerError` for all of them. Errors that mean "no such
thing" also inherit :class:`LookupError`, errors that mean "bad value or a move
the table forbids" also inherit :class:`ValueError`, so a host can handle them
with the built-in classes it already knows.

Each message names the value at fault and, where there is one, the fix. The
messages the REST contract spells out (``Can't find task with id '7'`` and
friends) are produced here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .status import TaskStatus

__all__ = [
    "TaskManagerError",
    "TaskNotFound",
    "UnknownTaskType",
    "InvalidStatus",
    "InvalidArgument",
    "LimitExceeded",
    "InvalidTransition",
    "CannotCancel",
    "IncompleteTask",
    "TaskCancelled",
    "TaskInterrupted",
    "ManagerStateError",
    "StoreError",
    "WaitTimeout",
]


class TaskManagerError(Exception):
    """Raised for every error of this library (the base class of all others)."""


class TaskNotFound(TaskManagerError, LookupError):
    """Raised when no task has the given id (in the given graph, if one was named)."""

    def __init__(self, task_id: object) -> None:
        self.task_id = task_id
        super().__init__(f"Can't find task with id '{task_id}'")


class UnknownTaskType(TaskManagerError, LookupError):
    """Raised when a task type is used that no callable was registered for."""

    def __init__(self, task_type: str, registered: list[str]) -> None:
        self.task_type = task_type
        self.registered = registered
        known = ", ".join(sorted(registered)) or "none"
        super().__init__(
            f"Task type {task_type!r} is not registered (registered types: {known}); "
            f"register a callable for it with @manager.task({task_type!r})"
        )


class InvalidStatus(TaskManagerError, ValueError):
    """Raised when a status name is not one of the twelve."""


class InvalidArgument(TaskManagerError, ValueError):
    """Raised when an argument has a bad value (a negative limit, a bad id or page token, non-JSON input)."""


class LimitExceeded(TaskManagerError, ValueError):
    """Raised when a task's input or result is larger than the configured limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"Task {what} size {size} exceeded limit {limit} bytes")


class InvalidTransition(TaskManagerError, ValueError):
    """Raised when a status change is refused by the transition table or lost to a concurrent change."""

    def __init__(
        self,
        task_id: int,
        current: TaskStatus | str | None,
        requested: TaskStatus | str,
        message: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.current = current
        self.requested = requested
        if message is None:
            cur = _upper(current)
            message = f"Task '{task_id}' can't move from status {cur} to {_upper(requested)}"
        super().__init__(message)


class CannotCancel(InvalidTransition):
    """Raised when cancelling a task that is already completed or being cancelled."""

    def __init__(self, task_id: int, current: TaskStatus | str) -> None:
        from .status import TaskStatus

        super().__init__(
            task_id,
            current,
            TaskStatus.CANCELLED,
            f"Can't cancel task '{task_id}' which is completed or cancelling",
        )


class IncompleteTask(InvalidTransition):
    """Raised when deleting the record of an unfinished task without ``force``."""

    def __init__(self, task_id: int, current: TaskStatus | str) -> None:
        super().__init__(
            task_id,
            current,
            "deleted",
            f"Can't delete incomplete task '{task_id}' in status {_upper(current)}, "
            "Please try to cancel the task first",
        )


class TaskCancelled(TaskManagerError):
    """Raised inside a running callable (by ``check_cancelled`` or ``sleep``) once its task is cancelled.

    Let it propagate: the task then ends CANCELLED. A callable that catches it
    and returns normally ends SUCCESS, which is what really happened.
    """


class TaskInterrupted(TaskCancelled):
    """Raised inside a running callable when the manager shuts down with ``interrupt=True``.

    Let it propagate: the task is then handed back (RESTORING) and runs again
    on the next node to start; it is not cancelled.
    """


class ManagerStateError(TaskManagerError, RuntimeError):
    """Raised when the manager is asked for something its run state does not allow."""


class StoreError(TaskManagerError):
    """Raised when the database cannot be written (locked for too long, disk full, I/O error).

    Nothing of the failed call was stored. ``__cause__`` holds the database's own error.
    """


class WaitTimeout(TaskManagerError, TimeoutError):
    """Raised by ``wait`` when the task is not terminal within the timeout."""


def _upper(value: object) -> str:
    name = getattr(value, "name", None)
    if isinstance(name, str):
        return name
    return str(value).upper()
