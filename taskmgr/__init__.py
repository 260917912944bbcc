"""taskmgr: an embedded task manager with a twelve-status lifecycle.

Register callables under task types, submit tasks, and watch and control them
(progress, cancel, suspend, resume, delete) through a Python API, a command
line and the graph database's REST contract. Records live in a SQLite file by
default, or in any peewee database.

    >>> from taskmgr import TaskManager
    >>> mgr = TaskManager("tasks.db", workers=4)          # doctest: +SKIP
    >>> @mgr.task("count")                                 # doctest: +SKIP
    ... def count(ctx):
    ...     for i in range(ctx.input["n"]):
    ...         ctx.progress = i
    ...         ctx.sleep(0.1)                  # wakes and raises when cancelled
    ...     return ctx.input["n"]
    >>> with mgr:                                          # doctest: +SKIP
    ...     tid = mgr.submit("count", {"n": 3})
    ...     mgr.wait(tid).result
    '3'
"""

from __future__ import annotations

from .context import TaskContext
from .errors import (
    CannotCancel,
    IncompleteTask,
    InvalidArgument,
    InvalidStatus,
    InvalidTransition,
    LimitExceeded,
    ManagerStateError,
    StoreError,
    TaskCancelled,
    TaskInterrupted,
    TaskManagerError,
    TaskNotFound,
    UnknownTaskType,
    WaitTimeout,
)
from .executor import InlineExecutor, PoolExecutor
from .manager import DEFAULT_GRAPH, DEFAULT_GRAPHSPACE, TaskManager, TaskType
from .status import NOT_STARTED, PREDECESSORS, TERMINAL, TRANSITIONS, TaskStatus, can_move
from .task import Task, TaskPage, Transition

__version__ = "0.1.0"

__all__ = [
    "TaskManager",
    "TaskType",
    "TaskContext",
    "Task",
    "TaskPage",
    "Transition",
    "TaskStatus",
    "TRANSITIONS",
    "PREDECESSORS",
    "TERMINAL",
    "NOT_STARTED",
    "can_move",
    "PoolExecutor",
    "InlineExecutor",
    "DEFAULT_GRAPH",
    "DEFAULT_GRAPHSPACE",
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
    "__version__",
]
