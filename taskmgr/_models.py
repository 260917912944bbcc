"""The store's tables: peewee models declared once, bound to a database at run time.

Owns the declarations of :class:`TaskRecord` and :class:`NodeRecord`, the
indexes, and the stored text of each status. Each
:class:`~taskmgr.store.Store` binds subclasses of the models to its own
database (:func:`bound`), so two stores on two databases live in one process.

Invariants: a task's id is never reused (``AUTOINCREMENT`` on SQLite, a
sequence elsewhere); a status is stored as its lower-case text; a row's
``history`` is its status changes, one JSON array ``[from, to, at]`` and a
newline each. Immutable after import: any thread may read it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from peewee import (
    SQL,
    BigAutoField,
    BigIntegerField,
    Database,
    DoubleField,
    IntegerField,
    Model,
    NodeList,
    SqliteDatabase,
    TextField,
)

from .status import TaskStatus
from .task import Task

__all__ = ["TaskRecord", "NodeRecord", "bound", "now_ms"]

#: each status's stored text (``.value`` through the enum's descriptor costs more, on the hot path)
TEXT: dict[Any, str] = {st: st.value for st in TaskStatus}
#: the same, and ``None`` as itself (a history entry's ``from`` on creation)
TEXT_OR_RAW: dict[Any, str | None] = {**TEXT, None: None}
#: the stored text of the terminal statuses
TERMINAL_TEXT: tuple[str, ...] = tuple(st.value for st in TaskStatus if st.terminal)
#: and back (the enum's own lookup by value costs more too)
BY_TEXT: dict[str, TaskStatus] = {st.value: st for st in TaskStatus}

#: a Task's fields, in its order: the columns read for one
TASK_FIELDS = tuple(f.name for f in dataclasses.fields(Task))
assert TASK_FIELDS[3] == "status"


def now_ms(clock: Callable[[], float] = time.time) -> int:
    """The clock's time in epoch milliseconds."""
    return int(clock() * 1000)


class _TaskIdField(BigAutoField):
    """A 64-bit key that is never reused: ``AUTOINCREMENT`` on SQLite, a sequence elsewhere."""

    def ddl(self, ctx: Any) -> Any:
        node = super().ddl(ctx)
        if isinstance(self.model._meta.database, SqliteDatabase):
            return NodeList((node, SQL("AUTOINCREMENT")))
        return node


class TaskRecord(Model):
    """One task. Public columns mirror the contract's record; the rest is bookkeeping.

    ``history`` is the task's recorded status changes, one JSON array
    ``[from, to, at]`` per line, each appended by the statement that makes the
    change.

    Bookkeeping columns: ``owner`` (the node running or due to run the task;
    null when any node may claim it), ``run_at`` (epoch ms at which a PENDING
    task wakes by itself; null while suspended by request), ``ran`` (1 once the
    callable started in the current attempt: the next re-run counts as a
    retry), ``restores`` (runs cut short by a crash), ``max_retries`` and
    ``retry_delay`` (seconds, doubled on each retry).
    """

    id = _TaskIdField()
    graphspace = TextField()
    graph = TextField()
    type = TextField()
    name = TextField()
    status = TextField()
    progress = BigIntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    created = BigIntegerField()
    updated = BigIntegerField()
    result = TextField(null=True)
    retries = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    callable = TextField()
    input = TextField(null=True)
    owner = TextField(null=True)
    run_at = BigIntegerField(null=True)
    ran = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    restores = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    max_retries = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    retry_delay = DoubleField(default=1.0, constraints=[SQL("DEFAULT 1.0")])
    history = TextField(null=True)

    class Meta:
        table_name = "taskmgr_task"
        # Each index is one more b-tree every commit writes to: (status, graphspace, graph, id)
        # serves a status in a graph and the housekeeping queries by status; (graphspace, graph,
        # id) a graph's whole list and the walks that find the graphs (see the planner in _reads).
        indexes = (
            (("status", "graphspace", "graph", "id"), False),
            (("graphspace", "graph", "id"), False),
        )
        # and, made by the schema: (run_at) WHERE status = 'pending' (see PENDING_INDEX). Any change
        # here is a new migration in taskmgr/_migrations.


class NodeRecord(Model):
    """A live manager (a "node"): who it is and when it last said so.

    ``heartbeat`` is written by the database's clock (epoch ms), ``lease_ms``
    is the node's own lease: it is dead once ``heartbeat + lease_ms`` is past
    (null in rows of older versions: the reaper's timeout applies).
    ``identity`` is its process's PID namespace and boot
    (:func:`~taskmgr.store.process_identity`; empty where unknown): its pid is
    checked only by a process of the same identity.
    """

    node = TextField(primary_key=True)
    host = TextField()
    pid = IntegerField()
    started = BigIntegerField()
    heartbeat = BigIntegerField()
    lease_ms = BigIntegerField(null=True)
    identity = TextField(null=True)

    class Meta:
        table_name = "taskmgr_node"


#: A partial index: only PENDING tasks wait for a time, and only their rows are in it, so a
#: status change of any other task does not touch it. A statement can use it only when it says
#: ``status = 'pending'`` literally, not as a bound parameter.
PENDING_INDEX = "taskmgr_task_pending_run_at"


def bound(model: type[Model], db: Database) -> Any:
    """A subclass of ``model`` bound to ``db`` (fields and indexes are inherited)."""
    meta = type("Meta", (), {"database": db, "table_name": model._meta.table_name})
    return type(model.__name__, (model,), {"Meta": meta, "__module__": "taskmgr.store"})
