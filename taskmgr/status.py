"""The twelve task statuses and the table of moves between them.

This module is the single source of truth for the task lifecycle. Nothing else
in the library decides whether a move is legal: the store turns
:data:`PREDECESSORS` into the ``WHERE status IN (...)`` clause of every
compare-and-set, and the tests walk every (from, to) pair of
:data:`TRANSITIONS`.

The table is the contract's (section 2); terminal statuses are *derived* from
it (a status with no way out), never listed separately, so the two cannot
drift apart.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from .errors import InvalidStatus

__all__ = [
    "TaskStatus",
    "TRANSITIONS",
    "PREDECESSORS",
    "TERMINAL",
    "NOT_STARTED",
    "can_move",
]


class TaskStatus(str, enum.Enum):
    """A task's status. The value is the lower-case wire name (``"success"``)."""

    UNKNOWN = "unknown"
    NEW = "new"
    SCHEDULING = "scheduling"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    PENDING = "pending"
    RESTORING = "restoring"
    RUNNING = "running"
    SUCCESS = "success"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        """True for SUCCESS, CANCELLED and FAILED: statuses that never change."""
        return not TRANSITIONS[self]

    @classmethod
    def parse(cls, value: str | TaskStatus) -> TaskStatus:
        """Return the status named by ``value``, in any ASCII case (``SUCCESS``, ``success``).

        :raises InvalidStatus: (a :class:`ValueError`) for anything that is not
            one of the twelve names; the message lists them, in the contract's
            words: ``Status value must be in [UNKNOWN, NEW, ...], but got 'xyz'``.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and value.isascii():  # exact names in any ASCII case: no spaces, no
            try:                                         # look-alike letters (a Kelvin sign lower-cases to k)
                return cls(value.lower())
            except ValueError:
                pass
        names = ", ".join(s.name for s in cls)
        raise InvalidStatus(f"Status value must be in [{names}], but got {value!r}")


_S = TaskStatus

#: Every allowed move: status -> the statuses it may move to. Read-only.
TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = MappingProxyType(
    {
        _S.NEW: frozenset({_S.SCHEDULING, _S.QUEUED, _S.PENDING, _S.CANCELLED, _S.FAILED, _S.UNKNOWN}),
        _S.SCHEDULING: frozenset({_S.SCHEDULED, _S.NEW, _S.PENDING, _S.CANCELLED, _S.FAILED, _S.UNKNOWN}),
        _S.SCHEDULED: frozenset({_S.QUEUED, _S.SCHEDULING, _S.PENDING, _S.CANCELLED, _S.FAILED, _S.UNKNOWN}),
        _S.QUEUED: frozenset({_S.RUNNING, _S.PENDING, _S.RESTORING, _S.CANCELLED, _S.FAILED, _S.UNKNOWN}),
        _S.PENDING: frozenset({_S.RESTORING, _S.CANCELLED, _S.FAILED, _S.UNKNOWN}),
        _S.RESTORING: frozenset({_S.QUEUED, _S.SCHEDULING, _S.PENDING, _S.CANCELLED, _S.FAILED, _S.UNKNOWN}),
        _S.RUNNING: frozenset({_S.SUCCESS, _S.FAILED, _S.CANCELLING, _S.PENDING, _S.RESTORING, _S.UNKNOWN}),
        _S.CANCELLING: frozenset({_S.CANCELLED, _S.SUCCESS, _S.FAILED, _S.UNKNOWN}),
        _S.UNKNOWN: frozenset({_S.RESTORING, _S.CANCELLED, _S.FAILED}),
        _S.SUCCESS: frozenset(),
        _S.CANCELLED: frozenset(),
        _S.FAILED: frozenset(),
    }
)

#: The inverse table: status -> the statuses that may move to it. Read-only.
PREDECESSORS: Mapping[TaskStatus, frozenset[TaskStatus]] = MappingProxyType(
    {to: frozenset(frm for frm, tos in TRANSITIONS.items() if to in tos) for to in TaskStatus}
)

#: Statuses that never change (derived: no way out in :data:`TRANSITIONS`).
TERMINAL: frozenset[TaskStatus] = frozenset(s for s, tos in TRANSITIONS.items() if not tos)

#: Statuses of a task whose callable has not started in its current attempt:
#: a cancel moves these straight to CANCELLED.
NOT_STARTED: frozenset[TaskStatus] = PREDECESSORS[_S.CANCELLED] - {_S.CANCELLING}


def can_move(frm: TaskStatus, to: TaskStatus) -> bool:
    """True when the table allows a move from ``frm`` to ``to``."""
    return to in TRANSITIONS[frm]
