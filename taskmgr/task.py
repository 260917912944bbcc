"""What a reader gets back: immutable snapshots of task records.

A :class:`Task` is a copy of one stored row taken at read time; it never
changes and never talks to the database. :meth:`Task.to_dict` is the JSON
object of the contract (section 1), with exactly its eleven keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from .status import TaskStatus

__all__ = ["Task", "TaskPage", "Transition"]


@dataclass(frozen=True, slots=True)
class Task:
    """A snapshot of one task record.

    ``created`` and ``updated`` are epoch milliseconds. ``input`` and ``result``
    are the stored JSON text (``None`` when absent); :attr:`input_value` and
    :attr:`result_value` decode them.
    """

    id: int
    type: str
    name: str
    status: TaskStatus
    progress: int
    created: int
    updated: int
    result: str | None
    retries: int
    callable: str
    input: str | None
    graph: str
    graphspace: str

    @property
    def terminal(self) -> bool:
        """True when the task is SUCCESS, CANCELLED or FAILED."""
        return self.status.terminal

    @property
    def input_value(self) -> Any:
        """The decoded input (``None`` when the task had none)."""
        return None if self.input is None else json.loads(self.input)

    @property
    def result_value(self) -> Any:
        """The decoded return value of a SUCCESS task.

        :raises ValueError: when the task did not succeed (its result, if any,
            is an error text, not JSON).
        """
        if self.status is not TaskStatus.SUCCESS:
            raise ValueError(f"task {self.id} is {self.status.name}, not SUCCESS: it has no return value")
        return None if self.result is None else json.loads(self.result)

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON object for this task, in the seed document's key order.

        ``task_result`` and ``task_input`` are left out while they are null,
        as the graph database does.
        """
        out: dict[str, Any] = {
            "task_name": self.name,
            "task_progress": self.progress,
            "task_create": self.created,
            "task_status": self.status.value,
            "task_update": self.updated,
        }
        if self.result is not None:
            out["task_result"] = self.result
        out["task_retries"] = self.retries
        out["id"] = self.id
        out["task_type"] = self.type
        out["task_callable"] = self.callable
        if self.input is not None:
            out["task_input"] = self.input
        return out


class TaskPage(NamedTuple):
    """One page of a paged listing: the tasks and the token of the next page (``None`` on the last)."""

    tasks: list[Task]
    next_page: str | None


class Transition(NamedTuple):
    """One recorded status change. ``from_status`` is ``None`` for the creation of the task."""

    task_id: int
    from_status: TaskStatus | str | None
    to_status: TaskStatus | str
    at: int
