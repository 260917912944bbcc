"""The store: peewee models, the database, and every write to it.

Design
======

*Models declared once, bound at run time.* :class:`TaskRecord`,
:class:`HistoryRecord` and :class:`NodeRecord` are declared here without a
database; each :class:`Store` makes subclasses bound to its own database, so
two managers on two databases can live in one process.

*Group commit, led by the writers themselves.* Every write goes through
:meth:`Store.write` (blocking) or :meth:`Store.write_async` (fire and
forget, with a callback). An operation is a function ``op(tx, *args)`` that
runs inside a transaction and talks to the database only through the
:class:`Tx` it is given. Operations wait in one queue. The first caller of
:meth:`Store.write` to find nobody committing becomes the *leader*: on its
own thread and connection it takes every operation queued, runs them all in
**one** ``BEGIN IMMEDIATE`` transaction, commits once, and only then
resolves them; it keeps leading while callers wait, and the callers that
came meanwhile sleep until their batch is over. A caller therefore never
hears "done" before its change is durable, a hundred concurrent changes cost
one commit (one fsync at ``synchronous=FULL``), and an uncontended write
costs no thread hand-off at all. (An earlier version sent every write to a
writer thread: two thread hand-offs per submit, which cost more than the
SQL.)

*Outcomes ride along.* :meth:`Store.write_async` (a callable's outcome:
nobody waits on it) only queues; the next leader commits it with its own
batch. The store's *flusher* thread commits what nobody else did within
:attr:`Store.LINGER` (1 ms; up to :attr:`Store.LINGER_MAX`, 16 ms, while other
writes keep carrying the queue, since each wake-up of the flusher costs a
stream a GIL hand-off), so an outcome is durable about a millisecond later
on a quiet manager, and under a stream of submissions a
task costs one commit instead of two. Reads never wait for writers: they run
on the caller's own connection (SQLite in WAL mode lets readers and a
writer proceed together).

*Work for the next commit.* :meth:`Store.defer` hands the leader a call to
make just before its next ``COMMIT``: what it sets going (a worker woken to
run a task submitted, and committed, a moment ago) runs while the commit
waits for the disk, with the GIL free, instead of against the leader's
statements. Only under a stream of commits; otherwise the call is made at
once.

*Checkpoints off the writers' path.* At ``synchronous`` NORMAL, a thread of
the store's own copies the WAL into the database file every hundred
commits, rather than the commit that takes the WAL past a thousand pages (see
:meth:`Store._checkpointer_loop`).

*Operations fail alone.* Each operation runs in a savepoint of its own. One
that refuses by raising a :class:`~taskmgr.errors.TaskManagerError` is rolled
back to its savepoint (whatever it wrote is undone) and its caller gets the
error; the others in its batch commit normally. The hot operations (submit,
start, finish) refuse only before they write, so they run without one
(``savepoint=False``: two statements fewer each). Any other exception (a
database error, a bug) rolls the batch back, and the leader replays its
operations one by one,
so only the guilty one fails. A database that stays locked (another process
holding the write lock past the busy timeout) is retried a bounded number of
times, then reported as :class:`~taskmgr.errors.StoreError`.

*An interrupt tells the truth.* A ``KeyboardInterrupt`` reaches the thread
leading a batch wherever Python delivers it. Before the ``COMMIT`` went
through, the transaction is rolled back and every operation of the batch
fails (nothing written); once it went through (the connection is in no
transaction and was not rolled back), every operation is told its outcome
as committed, and only then does the interrupt go on. Either way the
leader's connection is left out of any transaction, ready for the next
batch.

*Every status change is a compare-and-set.* :meth:`Tx.move` issues
``UPDATE ... SET status=:to WHERE id=:id AND status=:from`` and reports
whether a row changed; it refuses outright a move the transition table does
not allow. With ``held_by`` it also requires the owner (``AND owner=:node``,
or ``owner IS NULL`` for :data:`NOBODY`): the manager's writes for a run,
and its take-overs, are fenced by the owner they expect (see "Fenced by the
owner" in :mod:`taskmgr.manager`).

*The history is in the row.* Every change (from, to, time) is appended to
the task's own ``history`` column by the statement that makes it, so the two
can never disagree, and a deleted task takes its history along. An earlier
version kept a history table: a second b-tree and its index written by every
commit, and a pass of Python building its rows; moving the history into the
row made a stream of no-op tasks 6% faster. That table is still read (its
rows placed among the row's entries by time), pruned and deleted from, never
written.

*Synchronous mode.* ``Store(..., group_commit=False)`` runs each operation at
once on the calling thread, in its own transaction, under a lock: the
deterministic mode behind the inline executor.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import json
import logging
import operator
import os
import socket
import sqlite3
import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar

import peewee
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

from .errors import (
    InvalidArgument,
    InvalidTransition,
    StoreError,
    TaskManagerError,
    TaskNotFound,
)
from .status import TaskStatus, can_move
from .task import Task, Transition

__all__ = ["Store", "Tx", "TaskRecord", "HistoryRecord", "NodeRecord", "now_ms", "process_identity"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
#: each status's stored text (``.value`` through the enum's descriptor costs more, on the hot path)
_TEXT: dict[Any, str] = {st: st.value for st in TaskStatus}
#: the same, and ``None`` as itself (a history row's ``from`` on creation)
_TEXT_OR_RAW: dict[Any, str | None] = {**_TEXT, None: None}
#: the stored text of the terminal statuses
_TERMINAL_TEXT: tuple[str, ...] = tuple(st.value for st in TaskStatus if st.terminal)
#: and back (the enum's own lookup by value costs more too)
_BY_TEXT: dict[str, TaskStatus] = {st.value: st for st in TaskStatus}


#: a Task's fields, in its order: the columns read for one (see :func:`_to_task`)
_TASK_FIELDS = tuple(f.name for f in dataclasses.fields(Task))
assert _TASK_FIELDS[3] == "status"


class _Nobody:
    """The type of :data:`NOBODY`."""

    def __repr__(self) -> str:
        return "NOBODY"


#: ``held_by=NOBODY``: the compare-and-set also requires the task to be owned by no node (an
#: ``owner`` that is NULL).
NOBODY: Any = _Nobody()


def held(owner: str | None) -> Any:
    """The ``held_by`` that requires the owner a row was read with: that node, or :data:`NOBODY`."""
    return NOBODY if owner is None else owner


def _owner_condition(held_by: Any) -> tuple[str, tuple[Any, ...]]:
    """The owner condition of an UPDATE for ``held_by`` (see :meth:`Store.update_sql`): its mode,
    and the parameter it takes (none, or the node)."""
    if held_by is None:
        return "", ()
    if held_by is NOBODY:
        return "null", ()
    return "eq", (held_by,)


def now_ms(clock: Callable[[], float] = time.time) -> int:
    """The clock's time in epoch milliseconds."""
    return int(clock() * 1000)


def process_identity() -> str:
    """This process's PID namespace and boot, ``"<boot_id>:<inode of /proc/self/ns/pid>"``, or
    ``""`` where they cannot be read. Two processes of equal non-empty identity see the same pids.

    Read at each call: a child forked into a new namespace has another.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except (OSError, ValueError):
        return ""
    return f"{boot}:{namespace}" if boot else ""


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
        # Two indexes serve every list, and each is one more b-tree that every commit writes to (a
        # status change moves a task in the first one): (status, graphspace, graph, id) serves a
        # status in a graph, and a status alone for the housekeeping queries; (graphspace, graph,
        # id) a graph's whole list, and the walks that find the graphs. A list by id order over
        # less than a graph's full scope merges graph by graph (Store.select). An earlier third
        # index, (status, id), cost a stream of no-op tasks 5.7% of its throughput.
        indexes = (
            (("status", "graphspace", "graph", "id"), False),
            (("graphspace", "graph", "id"), False),
        )
        # and, made by Store: (run_at) WHERE status = 'PENDING' (see PENDING_INDEX)


class HistoryRecord(Model):
    """One status change of one task, as recorded by earlier versions (``from_status`` is null for
    the creation). Today's changes go to the task's own ``history`` column; the rows of this table
    are still read, pruned, and deleted with their task, and never written."""

    id = BigAutoField()
    task = BigIntegerField(column_name="task_id")
    from_status = TextField(null=True)
    to_status = TextField()
    at = BigIntegerField()

    class Meta:
        table_name = "taskmgr_history"
        indexes = ((("task", "id"), False),)


class NodeRecord(Model):
    """A live manager (a "node"): who it is and when it last said so.

    ``heartbeat`` is written by the database's clock (epoch ms), ``lease_ms``
    is the node's own lease: it is dead once ``heartbeat + lease_ms`` is past
    (null in rows of older versions: the reaper's timeout applies).
    ``identity`` is its process's PID namespace and boot
    (:func:`process_identity`; empty where unknown): its pid is checked only
    by a process of the same identity.
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


_MODELS: tuple[type[Model], ...] = (TaskRecord, HistoryRecord, NodeRecord)

#: A partial index: only PENDING tasks wait for a time, and only their rows are in it, so a
#: status change of any other task does not touch it (an index on (status, run_at) held every
#: row and cost each commit of a stream of short tasks about a fifth of its time). A query
#: uses it only when it says ``status = 'PENDING'`` literally, not as a bound parameter.
PENDING_INDEX = "taskmgr_task_pending_run_at"
#: made by earlier versions, dropped when a store opens: replaced by PENDING_INDEX, and by the
#: (status, graphspace, graph, id) index
_OLD_INDEXES = ("taskrecord_status_run_at", "taskrecord_graphspace_graph_status_id", "taskrecord_status_id")


#: the PostgreSQL advisory lock held while a store makes or updates its schema: two nodes opening
#: a database of an earlier version at once would otherwise each take a share lock on the task
#: table (its new index), then wait for the other's to drop the old ones (a deadlock)
_SCHEMA_LOCK = 0x7461736B6D6772  # "taskmgr"


def _bound(model: type[Model], db: Database) -> type[Model]:
    """A subclass of ``model`` bound to ``db`` (fields and indexes are inherited)."""
    meta = type("Meta", (), {"database": db, "table_name": model._meta.table_name})
    return type(model.__name__, (model,), {"Meta": meta, "__module__": __name__})


def open_sqlite(
    path: str | os.PathLike[str], synchronous: str, busy_timeout: float, autocheckpoint: int | None = None
) -> SqliteDatabase:
    """Open (creating it owner-only if missing) the SQLite file at ``path`` in WAL mode.

    ``autocheckpoint``: the WAL size, in pages, past which a committing
    connection checkpoints by itself (SQLite's ``wal_autocheckpoint``;
    None leaves SQLite's default, 1000).
    """
    path = os.fspath(path)
    if not path or path == ":memory:" or path.startswith("file:"):
        raise InvalidArgument(
            f"database {path!r} is not a file path: the manager's threads each open their own "
            "connection, so it needs a file (use a temporary file in tests)"
        )
    sync = str(synchronous).upper()
    if sync not in _SYNCHRONOUS:
        raise InvalidArgument(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}")
    if busy_timeout <= 0:
        raise InvalidArgument(f"busy_timeout must be a positive number of seconds, got {busy_timeout!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InvalidArgument(f"cannot create database {path!r}: directory {parent!r} does not exist")
    try:  # create owner-only; SQLite gives the -wal and -shm files the same mode
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    pragmas: list[tuple[str, Any]] = [("journal_mode", "wal"), ("synchronous", sync), ("cache_size", -16000)]
    if autocheckpoint is not None:
        pragmas.append(("wal_autocheckpoint", autocheckpoint))
    return SqliteDatabase(path, pragmas=pragmas, timeout=busy_timeout)


class _Op:
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


#: peewee's converter of driver errors into its own classes (what Database.execute_sql wraps each call in)
_wrap_db_errors = getattr(peewee, "__exception_wrapper__")  # noqa: B009 - a module-private name


_OPEN, _COMMITTING, _ROLLED_BACK = range(3)  # a Tx's state


def _in_transaction(cursor: Any) -> bool:
    """Whether a DB-API cursor's connection is inside a transaction (True when it cannot tell)."""
    conn = cursor.connection
    state = getattr(conn, "in_transaction", None)  # sqlite3
    if isinstance(state, bool):
        return state
    try:
        return int(conn.info.transaction_status) != 0  # psycopg2 and psycopg 3: 0 is IDLE
    except Exception:  # noqa: BLE001 - a driver that does not say: as if still in one
        return True


class Tx:
    """The handle an operation gets: the only way it touches the database.

    All methods run inside the leader's open transaction, on one DB-API
    cursor of the leader's connection: a statement costs the driver's call,
    not peewee's per-statement wrapping (the leader converts the driver's
    errors into peewee's once per batch). ``now`` is the batch's timestamp
    (epoch ms), shared by every change in it.
    """

    __slots__ = ("store", "now", "changes", "writes", "state", "_cursor")

    def __init__(self, store: Store, cursor: Any) -> None:
        self.store = store
        self.now = 0  # set by the leader once it holds the write lock (see Store._attempt)
        self.state = _OPEN  # _COMMITTING once its COMMIT is issued, _ROLLED_BACK once given up
        self._cursor = cursor
        #: ``(task_id, from, to)`` of every move made so far in this transaction
        self.changes: list[tuple[int, TaskStatus | str | None, TaskStatus]] = []
        #: statements that may have written (any statement run through :meth:`execute` counts)
        self.writes = 0

    def committed(self) -> bool:
        """Whether the transaction's COMMIT went through: it was issued, and the connection is in
        no transaction now (nor was it rolled back). For the store's leader, which an interrupt
        may reach just as the COMMIT returns."""
        return self.state == _COMMITTING and not _in_transaction(self._cursor)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement in the transaction and return the cursor."""
        self.writes += 1
        self._cursor.execute(sql, params)
        return self._cursor

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self._cursor.execute(sql, params)
        return self._cursor

    def row(self, task_id: int, *, lock: bool = False) -> dict[str, Any] | None:
        """The stored row as a dict (``status`` left as stored text), or ``None``.

        ``lock``: hold the row until the commit, for a decision on columns that the moves'
        compare-and-set does not check, or read ``None`` when another transaction holds it
        (``SELECT ... FOR UPDATE SKIP LOCKED``: a row being changed is left to that change, and
        waiting for it could close a cycle of locks with another node's batch). SQLite's write
        lock already holds everything: its transaction is the only writer."""
        sql = self.store._row_sql
        if lock and not self.store.is_sqlite:
            sql += " FOR UPDATE SKIP LOCKED"
        found = self._exec(sql, (task_id,)).fetchone()
        return None if found is None else dict(zip(self.store._row_names, found))

    def rows(self, task_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The stored rows of ``task_ids`` that exist, by id, read by one statement per 500 ids
        (as :meth:`row` reads one)."""
        s, found = self.store, {}
        for i in range(0, len(task_ids), 500):
            chunk = task_ids[i : i + 500]
            marks = ", ".join([s.db.param] * len(chunk))
            for values in self._exec(f"{s._rows_sql} IN ({marks})", tuple(chunk)).fetchall():
                row = dict(zip(s._row_names, values))
                found[row["id"]] = row
        return found

    def require(self, task_id: int, graphspace: str | None = None, graph: str | None = None) -> dict[str, Any]:
        """The row of ``task_id`` (in that graph, if named).

        :raises TaskNotFound: when there is none.
        """
        row = self.row(task_id)
        if row is None or not _in_scope(row, graphspace, graph):
            raise TaskNotFound(task_id)
        return row

    def insert(self, fields: dict[str, Any], path: Sequence[TaskStatus] = (TaskStatus.NEW,)) -> int:
        """Insert one task row and return its id (see :meth:`insert_many`)."""
        return self.insert_many([fields], path)[0]

    def insert_many(self, rows: Sequence[dict[str, Any]], path: Sequence[TaskStatus] = (TaskStatus.NEW,)) -> list[int]:
        """Insert many rows (all with the same keys) and return their ids in order.

        ``path`` is the statuses each new task goes through in this
        transaction, starting at NEW: the row is written once, in the last
        one, and the history records every step (a task submitted straight
        to a free worker is written RUNNING, with NEW -> QUEUED -> RUNNING).

        :raises InvalidTransition: when ``path`` does not start at NEW or
            takes a step the table does not allow.
        """
        if not rows:
            _creation(tuple(path))  # still refuses a bad path
            return []
        s = self.store
        cols, steps, heads, status, per_statement = s._insert_plan(tuple(rows[0]), tuple(path))
        now = self.now
        extra: tuple[Any, ...] = (status, now, now)
        if heads:
            tail = f"{now}]\n"
            extra += (tail.join(heads) + tail,)
        ids: list[int]
        if len(rows) == 1 and not s.returning:  # a submit: one statement, one tuple, no loop
            self.writes += 1
            ids = [int(self._exec(s.insert_sql(cols), (*rows[0].values(), *extra)).lastrowid)]
        else:
            ids = []
            for i in range(0, len(rows), per_statement):
                chunk = rows[i : i + per_statement]
                params: list[Any] = []
                for r in chunk:
                    params += r.values()
                    params += extra
                self.writes += 1
                if s.returning:
                    cursor = self._exec(s.insert_sql(cols, len(chunk), True), params)
                    ids += [int(r[0]) for r in cursor.fetchall()]
                else:  # SQLite: one statement under the write lock gets consecutive AUTOINCREMENT ids
                    last = int(self._exec(s.insert_sql(cols, len(chunk), False), params).lastrowid)
                    ids += range(last - len(chunk) + 1, last + 1)
        self.changes += [(i, frm, to) for i in ids for frm, to in steps]
        return ids

    def move(self, task_id: int, frm: TaskStatus, to: TaskStatus, *, held_by: str | None = None,
             **fields: Any) -> bool:
        """Compare-and-set: move ``task_id`` from ``frm`` to ``to`` if it is still ``frm`` (and,
        with ``held_by``, still owned by that node, or by none for :data:`NOBODY`).

        ``fields`` are other columns to set in the same statement. Returns
        False when the row is gone, no longer in ``frm`` or (``held_by``) not
        owned as it says: nothing written.

        :raises InvalidTransition: when the table does not allow ``frm`` -> ``to``.
        """
        if not can_move(frm, to):
            raise InvalidTransition(task_id, frm, to)
        return self._cas(task_id, frm, to, fields, "", held_by=held_by) is not None

    def move_path(self, task_id: int, path: Sequence[TaskStatus], *, held_by: str | None = None,
                  **fields: Any) -> bool:
        """:meth:`move` along ``path`` (``path[0]`` -> ... -> ``path[-1]``) in one statement: a
        compare-and-set from ``path[0]``, each step checked against the table and recorded in the
        history, as that many moves in a row would be (one UPDATE where they cost one each).

        :raises InvalidTransition: at the first step the table does not allow.
        """
        steps = list(zip(path, path[1:]))
        if not steps:
            raise ValueError("a path has at least two statuses")
        for frm, to in steps:
            if not can_move(frm, to):
                raise InvalidTransition(task_id, frm, to)
        return self._cas(task_id, path[0], path[-1], fields, "", steps, held_by) is not None

    def move_returning(self, task_id: int, frm: TaskStatus, to: TaskStatus, *, held_by: str | None = None,
                       **fields: Any) -> dict[str, Any] | None:
        """:meth:`move`, returning the moved row (as :meth:`row` does), or None when nothing moved.

        One statement (``UPDATE ... RETURNING``) where the database has it.
        """
        s = self.store
        if not s.update_returning:
            return self.row(task_id) if self.move(task_id, frm, to, held_by=held_by, **fields) else None
        if not can_move(frm, to):
            raise InvalidTransition(task_id, frm, to)
        found = self._cas(task_id, frm, to, fields, s._returning_all, held_by=held_by)
        return None if found is None else dict(zip(s._row_names, found))

    def move_from_stored(self, task_id: int, stored: str, to: TaskStatus, **fields: Any) -> bool:
        """Move a row whose stored status is not one of the twelve (a damaged record) to ``to``.

        Only UNKNOWN is a legal target: a damaged record is first declared
        UNKNOWN, and from there follows the table.
        """
        if to is not TaskStatus.UNKNOWN:
            raise InvalidTransition(task_id, stored, to)
        return self._cas(task_id, stored, to, fields, "") is not None

    def _cas(self, task_id: int, frm: TaskStatus | str, to: TaskStatus, fields: dict[str, Any], returning: str,
             steps: list[tuple[TaskStatus, TaskStatus]] | None = None, held_by: str | None = None) -> Any:
        """The compare-and-set statement of the moves (already checked against the table): the
        returned row (``returning``) or True when it moved, None when it did not. ``steps``: the
        transitions recorded for a move along a path (see :meth:`move_path`); ``held_by``: the
        owner the row must still have."""
        fields["status"] = _TEXT[to]
        fields["updated"] = self.now
        if self.store.history_enabled:
            if steps is None:
                fields["history"] = f"{_entry_head(frm, to)}{self.now}]\n"
            else:
                fields["history"] = "".join(f"{_entry_head(a, b)}{self.now}]\n" for a, b in steps)
        mode, owner = _owner_condition(held_by)
        sql = self.store.update_sql(tuple(fields), True, 1, mode)
        params = (*fields.values(), task_id, _TEXT.get(frm, frm), *owner)
        if returning:
            found = self._exec(sql + returning, params).fetchone()
            if found is None:
                return None
        elif self._exec(sql, params).rowcount == 1:
            found = True
        else:
            return None
        self.writes += 1
        if steps is None:
            self.changes.append((task_id, frm, to))
        else:
            self.changes += [(task_id, a, b) for a, b in steps]
        return found

    def update(self, task_id: int, statuses: Collection[TaskStatus], *, held_by: str | None = None,
               **fields: Any) -> bool:
        """Set columns other than the status, only while the task is in one of ``statuses`` (and,
        with ``held_by``, owned by that node, or by none for :data:`NOBODY`)."""
        mode, owner = _owner_condition(held_by)
        sql = self.store.update_sql(tuple(fields), False, len(statuses), mode)
        if self._exec(sql, (*fields.values(), task_id, *(st.value for st in statuses), *owner)).rowcount != 1:
            return False
        self.writes += 1
        return True

    def disown_pending(self, node: str) -> int:
        """Leave the PENDING tasks that ``node`` owns to any node (their owner becomes NULL);
        returns how many. Their status, time and history do not change."""
        s = self.store
        sql = (f"UPDATE {s._quote(s.Task._meta.table_name)} SET {s._col('owner')} = NULL "
               f"WHERE {s._col('owner')} = {s.db.param} AND {s._col('status')} = {s.db.param}")
        n = self._exec(sql, (node, TaskStatus.PENDING.value)).rowcount
        self.writes += 1
        return int(n)

    def nodes(self) -> set[str]:
        """The names of the registered nodes, read in this transaction."""
        s = self.store
        table, col = s._quote(s.Node._meta.table_name), s._quote(s.Node._meta.fields["node"].column_name)
        return {name for (name,) in self._exec(f"SELECT {col} FROM {table}").fetchall()}

    def delete(self, task_id: int) -> bool:
        """Delete a task's row and its history. Returns False when there was no row."""
        s = self.store
        n = s.Task.delete().where(s.Task.id == task_id).execute()  # its history goes with the row
        s.History.delete().where(s.History.task == task_id).execute()  # and what earlier versions kept
        self.writes += 1
        return bool(n)


@functools.lru_cache(maxsize=32)
def _creation(path: tuple[TaskStatus, ...]) -> tuple[tuple[TaskStatus | None, TaskStatus], ...]:
    """The history steps of a task created along ``path`` (checked against the table once per path)."""
    if not path or path[0] is not TaskStatus.NEW:
        raise InvalidTransition(0, None, path[0] if path else TaskStatus.NEW)
    steps = tuple(itertools.pairwise(path))
    for frm, to in steps:
        if not can_move(frm, to):
            raise InvalidTransition(0, frm, to)
    return ((None, TaskStatus.NEW), *steps)


def _in_scope(row: dict[str, Any], graphspace: str | None, graph: str | None) -> bool:
    return (graphspace is None or row["graphspace"] == graphspace) and (graph is None or row["graph"] == graph)


class Store:
    """A task database: the models bound to it, its write queue, and its queries.

    :param database: a file path (SQLite, created owner-only if missing) or an
        open peewee :class:`~peewee.Database` (SQLite or PostgreSQL) that the
        host owns; the store then neither sets its pragmas nor closes it.
    :param synchronous: SQLite's ``synchronous`` for a path: ``"FULL"`` (the
        default: a commit survives power loss) or ``"NORMAL"`` (survives a
        crash of the process, may lose the last commits on power loss).
    :param busy_timeout: seconds a connection waits for another's write lock.
    :param history: record every status change (in each task's row).
    :param group_commit: share transactions between concurrent writers (the
        default), or run each write alone, at once, on the calling thread.
    :param clock: the time source, seconds since the epoch.
    """

    #: how many times a batch is retried when the database stays locked
    LOCK_RETRIES = 3
    #: most operations in one transaction
    MAX_BATCH = 2048
    #: seconds an asynchronous write waits for another write to share its commit (at least; see
    #: the flusher)
    LINGER = 0.001
    #: the most it waits, under a stream of writes that carry such writes along
    LINGER_MAX = 0.016
    #: seconds without writes after which the flusher waits to be woken instead of looking
    FLUSHER_IDLE = 0.1
    #: the gap between two commits under which writes count as a stream, and how long a
    #: :meth:`defer`-red call waits for the next commit before the flusher may run it itself
    DEFER_MAX = 0.001
    #: the longest list that :meth:`select` merges across graphs by ids before reading rows
    MERGE_BY_IDS = 10_000
    #: the most ids one statement of :meth:`select` asks for (a longer list is read in parts)
    IDS_PER_READ = 512
    #: commits between two checkpoints of the background checkpointer (a SQLite file the store
    #: opened at ``synchronous`` NORMAL or OFF, with group commit)
    CHECKPOINT_EVERY = 100
    #: WAL pages past which a committing connection checkpoints by itself all the same (where the
    #: checkpointer runs): what lets the WAL start over under a steady stream, and the backstop
    #: for a checkpointer that falls behind (one huge batch) or cannot run
    CHECKPOINT_BACKSTOP = 6000

    def __init__(
        self,
        database: str | os.PathLike[str] | Database,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        history: bool = True,
        group_commit: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        background = False  # checkpoint on a thread of the store's own (see _checkpointer_loop)
        if isinstance(database, Database):
            self.db = database
            self._owns_db = False
        elif isinstance(database, (str, os.PathLike)):
            # At FULL the checkpoint stays in the committing connection: the WAL is already synced
            # there, so it is cheap (measured: under 1 ms), and a checkpoint on another thread syncs
            # the database file while the writers sync the WAL, which cost a stream of tasks 5-8%.
            background = group_commit and str(synchronous).upper() in ("NORMAL", "OFF")
            self.db = open_sqlite(
                database, synchronous, busy_timeout, self.CHECKPOINT_BACKSTOP if background else None
            )
            self._owns_db = True
        else:
            raise InvalidArgument(
                f"database must be a file path or a peewee Database, got {type(database).__name__}"
            )
        self.clock = clock
        self.history_enabled = history
        self.is_sqlite = isinstance(self.db, SqliteDatabase)
        self.returning = bool(getattr(self.db, "returning_clause", False)) and not self.is_sqlite
        #: UPDATE ... RETURNING: PostgreSQL, and SQLite from 3.35
        self.update_returning = not self.is_sqlite or sqlite3.sqlite_version_info >= (3, 35)
        self.Task: Any = _bound(TaskRecord, self.db)
        self.History: Any = _bound(HistoryRecord, self.db)
        self.Node: Any = _bound(NodeRecord, self.db)
        self._listeners: list[Callable[[list[tuple[int, Any, TaskStatus]]], None]] = []
        # a row read as a dict (an operation's, a listing's) leaves the history out: nothing there
        # needs it, and it grows with every change
        fields = [f for f in self.Task._meta.sorted_fields if f.name != "history"]
        self._row_fields = fields
        self._row_names = [f.name for f in fields]
        self._select_rows_sql = (
            f"SELECT {', '.join(self._quote(f.column_name) for f in fields)} FROM {self._quote(self.Task._meta.table_name)}"
        )
        self._rows_sql = f"{self._select_rows_sql} WHERE {self._col('id')}"  # completed by " IN (...)" (Tx.rows)
        self._row_sql = f"{self._rows_sql} = {self.db.param}"
        self._returning_all = f" RETURNING {', '.join(self._quote(f.column_name) for f in fields)}"
        self._task_sql = (
            f"SELECT {', '.join(self._col(name) for name in _TASK_FIELDS)} "
            f"FROM {self._quote(self.Task._meta.table_name)} WHERE {self._col('id')} = {self.db.param}"
        )
        try:
            with self.db.atomic():
                if isinstance(self.db, peewee.PostgresqlDatabase):  # one node at a time makes the schema
                    self.db.execute_sql(f"SELECT pg_advisory_xact_lock({self.db.param})", (_SCHEMA_LOCK,))
                self.db.create_tables([self.Task, self.History, self.Node], safe=True)
                table = self._quote(self.Task._meta.table_name)
                self.db.execute_sql(
                    f"CREATE INDEX IF NOT EXISTS {self._quote(PENDING_INDEX)} ON {table} ({self._col('run_at')}) "
                    f"WHERE {self._col('status')} = '{TaskStatus.PENDING.value}'"
                )
                for old in _OLD_INDEXES:
                    self.db.execute_sql(f"DROP INDEX IF EXISTS {self._quote(old)}")
                if "history" not in {c.name for c in self.db.get_columns(self.Task._meta.table_name)}:
                    self.db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {self._col('history')} TEXT")
                node_columns = {c.name for c in self.db.get_columns(self.Node._meta.table_name)}
                for name, kind in (("lease_ms", "BIGINT"), ("identity", "TEXT")):
                    if name not in node_columns:
                        self.db.execute_sql(
                            f"ALTER TABLE {self._quote(self.Node._meta.table_name)} ADD COLUMN {self._quote(name)} {kind}")
        except peewee.DatabaseError as exc:
            raise StoreError(f"cannot open the task store at {self.db.database!r}: {exc}") from exc
        self._closed = False
        self._sync_lock = threading.Lock()
        self._group = group_commit
        self._mu = threading.Lock()  # guards the queue and the leader's flag
        self._wake = threading.Condition(self._mu)  # wakes the flusher
        self._pending: deque[_Op] = deque()
        self._sync_pending = 0  # queued operations whose caller waits
        self._leading = False
        self._leader: int | None = None  # the leading thread's ident
        self._flusher_idle = False
        self._flusher: threading.Thread | None = None
        self._deferred: deque[tuple[float, Callable[[], None]]] = deque()  # (when, call): see defer()
        self._last_commit = 0.0  # when the last commit a caller waited for ended (monotonic)
        self._commit_gap = float("inf")  # and how long after the one before it
        if group_commit:
            self._flusher = threading.Thread(target=self._flusher_loop, name="taskmgr-flusher", daemon=True)
            self._flusher.start()
        self._commits = 0  # commits of this store's writers
        self._checkpoint_at = self.CHECKPOINT_EVERY  # the commit count that wakes the checkpointer
        self.checkpoints = 0  # checkpoints the checkpointer ran
        self._checkpoint_due = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if self._owns_db and background:
            self._checkpointer = threading.Thread(
                target=self._checkpointer_loop, name="taskmgr-checkpointer", daemon=True
            )
            self._checkpointer.start()

    # ------------------------------------------------------------------ SQL
    def _quote(self, name: str) -> str:
        q = self.db.quote  # peewee keeps the opening and closing quote characters, e.g. '""'
        return q[0] + name.replace(q[1], q[1] * 2) + q[1]

    def _col(self, name: str) -> str:
        return self._quote(self.Task._meta.fields[name].column_name)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one Store lives as long as its manager
    def update_sql(self, cols: tuple[str, ...], by_status: bool, n_status: int = 1, by_owner: str = "") -> str:
        """The UPDATE of ``cols`` by id and status (one, or ``n_status`` of them), and by the owner:
        ``by_owner`` is ``""`` (any), ``"eq"`` (a parameter) or ``"null"`` (none)."""
        p = self.db.param
        sets = ", ".join(f"{self._col(c)} = {p}" if c != "history" else
                         f"{self._col(c)} = COALESCE({self._col(c)}, '') || {p}" for c in cols)
        table = self._quote(self.Task._meta.table_name)
        where = f"{self._col('id')} = {p} AND {self._col('status')} "
        where += f"= {p}" if by_status else f"IN ({', '.join([p] * n_status)})"
        if by_owner:
            where += f" AND {self._col('owner')} " + (f"= {p}" if by_owner == "eq" else "IS NULL")
        return f"UPDATE {table} SET {sets} WHERE {where}"

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _insert_plan(self, keys: tuple[str, ...], path: tuple[TaskStatus, ...]) -> tuple[
        tuple[str, ...], tuple[tuple[TaskStatus | None, TaskStatus], ...], tuple[str, ...], str, int
    ]:
        """What :meth:`Tx.insert_many` needs for rows with ``keys`` created along ``path``, worked
        out once per shape: the columns written, the history steps and their entries up to the
        time (none when history is off), the stored status, and rows per statement (SQLite caps
        bound parameters per statement; this stays well under it)."""
        steps = _creation(path)
        if self.history_enabled:
            cols = keys + ("status", "created", "updated", "history")
            heads = tuple(_entry_head(frm, to) for frm, to in steps)
        else:
            cols, heads = keys + ("status", "created", "updated"), ()
        return cols, steps, heads, _TEXT[path[-1]], max(1, 30000 // len(cols))

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def insert_sql(self, cols: tuple[str, ...], rows: int = 1, returning: bool = False) -> str:
        p = self.db.param
        table = self._quote(self.Task._meta.table_name)
        values = "(" + ", ".join([p] * len(cols)) + ")"
        sql = f"INSERT INTO {table} ({', '.join(self._col(c) for c in cols)}) VALUES " + ", ".join([values] * rows)
        if returning:
            sql += f" RETURNING {self._col('id')}"
        return sql

    # ---------------------------------------------------------------- reads
    def get(self, task_id: int, graphspace: str | None = None, graph: str | None = None) -> Task | None:
        """The task (in that graph, if named), or ``None``."""
        rows = self._read(self._task_sql, (task_id,))  # the driver alone: peewee's logging and hooks cost more
        if not rows:
            return None
        task = _to_task(rows[0])
        if (graphspace is not None and task.graphspace != graphspace) or (graph is not None and task.graph != graph):
            return None
        return task

    def select(
        self,
        *,
        status: TaskStatus | None = None,
        graphspace: str | None = None,
        graph: str | None = None,
        ids: Iterable[int] | None = None,
        after: int = 0,
        limit: int = -1,
    ) -> list[Task]:
        """Tasks matching every given filter, in ascending id order, ids above ``after``.

        The indexes that list tasks in id order start with ``(graphspace,
        graph)`` (with the status first, for a status). A graph named without
        its graphspace, a graphspace without a graph, or a status alone fixes
        only part of that prefix, and SQLite would then scan the table or sort
        every match (measured over 1,000,000 records: 45 ms p50 and 224 ms p99
        for ``graph=`` alone, 85 ms for ``graphspace=`` alone). Instead the
        pairs that exist are found by walking the index (one seek per distinct
        value, see :meth:`_distinct`), the ids of each pair are read from the
        index alone, the sorted lists are merged, and only the rows of the
        first ``limit`` ids are read (over 1,000,000 records in ten graphs:
        0.6 ms p50 for a graph alone, 0.9 ms for a graphspace alone, 1.1 ms for
        a status alone). The cost is one index read per pair, about 15 us: a
        status alone over 20,000 graphs takes 300 ms, where an index of its
        own answered in 1 ms; that index cost every commit a b-tree more.
        """
        partial = graph is None or graphspace is None
        if ids is None and partial and not (graph is None and graphspace is None and status is None):
            pairs = self._pairs(graphspace, graph)
            if len(pairs) != 1:
                if limit < 0 or limit > self.MERGE_BY_IDS:  # a long list: merge the tasks themselves
                    found = [self._select(status, gs, g, None, after, limit) for gs, g in pairs]
                    merged = heapq.merge(*found, key=lambda t: t.id)
                    return list(merged if limit < 0 else itertools.islice(merged, limit))
                chosen = list(itertools.islice(heapq.merge(*(self._ids(status, gs, g, after, limit)
                                                             for gs, g in pairs)), limit))
                return self._select(None, None, None, chosen, 0, -1) if chosen else []
            graphspace, graph = pairs[0]
        return self._select(status, graphspace, graph, ids, after, limit)

    def _pairs(self, graphspace: str | None, graph: str | None) -> list[tuple[str, str]]:
        """The (graphspace, graph) pairs that have tasks, within what is named (one of the two, or
        neither)."""
        if graphspace is not None:
            return [(graphspace, g) for g in self._distinct("graph", graphspace)]
        if graph is not None:
            return [(gs, graph) for gs in self._distinct("graphspace") if self._has(gs, graph)]
        return [(gs, g) for gs in self._distinct("graphspace") for g in self._distinct("graph", gs)]

    def _ids(self, status: TaskStatus | None, graphspace: str, graph: str, after: int, limit: int) -> list[int]:
        """Ids of one graph's tasks (with that status), above ``after``: an index-only read."""
        head = () if status is None else (status.value,)
        sql = self._list_sql(status is not None, True, True, -1, True, True, "id")
        return [r[0] for r in self._read(sql, (*head, graphspace, graph, after, limit))]

    def _select(self, status: TaskStatus | None, graphspace: str | None, graph: str | None,
                ids: Iterable[int] | None, after: int, limit: int) -> list[Task]:
        if ids is None:
            return self._select_part(status, graphspace, graph, None, after, limit)
        found: list[Task] = []
        for part in self._parts(ids):
            found += self._select_part(status, graphspace, graph, part, after,
                                       -1 if limit < 0 else limit - len(found))
            if 0 <= limit <= len(found):
                break
        return found

    def _parts(self, ids: Iterable[int]) -> Iterable[list[int]]:
        """``ids`` sorted, without repeats, in parts of at most :attr:`IDS_PER_READ`, each padded
        (with its last id again) to a power of two: a list of any length is read by one of ten
        statements, prepared once, and stays under the database's limit on parameters (32,766 in
        SQLite's default build)."""
        id_list = sorted(set(ids))
        for start in range(0, len(id_list), self.IDS_PER_READ):
            part = id_list[start:start + self.IDS_PER_READ]
            yield part + part[-1:] * ((1 << (len(part) - 1).bit_length()) - len(part))

    def statuses(self, ids: Iterable[int]) -> dict[int, TaskStatus]:
        """The status of each of these tasks that exists (UNKNOWN for a damaged one): two columns
        of each row, about a sixth of the cost of reading the tasks."""
        found: dict[int, TaskStatus] = {}
        for part in self._parts(ids):
            sql = self._list_sql(False, False, False, len(part), False, False, "status")
            for task_id, text in self._read(sql, part):
                found[task_id] = _BY_TEXT.get(text, TaskStatus.UNKNOWN)
        return found

    def _select_part(self, status: TaskStatus | None, graphspace: str | None, graph: str | None,
                     id_list: list[int] | None, after: int, limit: int) -> list[Task]:
        params: list[Any] = [] if status is None else [status.value]
        for value in (graphspace, graph):
            if value is not None:
                params.append(value)
        if id_list is not None:
            params += id_list
        if after:
            params.append(after)
        if limit >= 0:
            params.append(limit)
        sql = self._list_sql(status is not None, graphspace is not None, graph is not None,
                             -1 if id_list is None else len(id_list), bool(after), limit >= 0, "task")
        return [_to_task(found) for found in self._read(sql, params)]

    @functools.lru_cache(maxsize=256)  # noqa: B019
    def _list_sql(self, status: bool, graphspace: bool, graph: bool, n_ids: int, after: bool, limit: bool,
                  what: str) -> str:
        """The SELECT of a list, the conditions given taking their parameters in this order: status,
        graphspace, graph, ``n_ids`` ids (none when negative), the id to start after, the limit.
        ``what`` is ``"id"`` (read from the index alone), ``"status"`` (the id and the status) or
        ``"task"`` (a Task's columns).

        Built once per shape and run by the driver alone: peewee took 0.3 ms to build and run each
        list of a graph's ids, six times the statement itself."""
        p = self.db.param
        conds = [f"{self._col(name)} = {p}" for name, on in (("status", status), ("graphspace", graphspace),
                                                                ("graph", graph)) if on]
        if n_ids >= 0:
            conds.append(f"{self._col('id')} IN ({', '.join([p] * n_ids)})")
        if after:
            conds.append(f"{self._col('id')} > {p}")
        names = {"id": ("id",), "status": ("id", "status")}.get(what, _TASK_FIELDS)
        cols = ", ".join(self._col(name) for name in names)
        sql = f"SELECT {cols} FROM {self._quote(self.Task._meta.table_name)}"
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        sql += f" ORDER BY {self._col('id')}"
        return sql + f" LIMIT {p}" if limit else sql

    def _read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of one read on this thread's connection, by the driver alone."""
        with _wrap_db_errors:
            cursor = self.db.cursor()
            cursor.execute(sql, params)  # (psycopg2's execute returns None, not the cursor)
            return cursor.fetchall()

    def _distinct(self, column: str, graphspace: str | None = None) -> list[str]:
        """The distinct graphspaces (or graphs of ``graphspace``), by one index seek per value: a
        recursive query walking the ``(graphspace, graph, ...)`` index, where ``SELECT DISTINCT``
        would read every entry."""
        table, col, p = self._quote(self.Task._meta.table_name), self._col(column), self.db.param
        where, params = "", ()
        if graphspace is not None:
            where, params = f"{self._col('graphspace')} = {p}", (graphspace,)
        first = f"SELECT MIN({col}) FROM {table}" + (f" WHERE {where}" if where else "")
        then = f"SELECT MIN({col}) FROM {table} WHERE " + (f"{where} AND " if where else "") + f"{col} > walk.v"
        sql = (f"WITH RECURSIVE walk(v) AS ({first} UNION ALL SELECT ({then}) FROM walk WHERE walk.v IS NOT NULL) "
               "SELECT v FROM walk WHERE v IS NOT NULL")
        return [r[0] for r in self.db.execute_sql(sql, (*params, *params))]

    def _has(self, graphspace: str, graph: str) -> bool:
        T = self.Task
        return bool(T.select(T.id).where(T.graphspace == graphspace, T.graph == graph).limit(1).exists())

    def _fetch(self, query: Any) -> Iterable[dict[str, Any]]:
        """Rows of a ``SELECT`` of the row's columns built with peewee, as dicts, without peewee's
        per-row conversion (every column is a plain integer, float or text: there is nothing to
        convert, and it cost over 1 ms per 100 rows)."""
        sql, params = query.sql()
        names = self._row_names
        return (dict(zip(names, row)) for row in self.db.execute_sql(sql, params))

    def ids_where(self, *conds: Any, limit: int | None = None, order_by: Any = None) -> list[int]:
        """Ids of the tasks matching peewee conditions on :attr:`Task`, ascending (or by ``order_by``)."""
        q = self.Task.select(self.Task.id).where(*conds).order_by(self.Task.id if order_by is None else order_by)
        if limit is not None:
            q = q.limit(limit)
        sql, params = q.sql()
        return [r[0] for r in self._read(sql, params)]  # by the driver: peewee's per-row work cost 5 us an id

    def rows_where(self, *conds: Any, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows matching peewee conditions on :attr:`Task`, ascending by id."""
        q = self.Task.select(*self._row_fields).where(*conds).order_by(self.Task.id)
        if limit is not None:
            q = q.limit(limit)
        return list(self._fetch(q))

    # --------------------------------------------------------- named reads
    # What the manager asks of the store, by name: the schema stays in here. Each is one statement
    # (or one per 500 ids) on the caller's connection, by the driver, as get() and select() are.
    def owned_ids(self, node: str, status: TaskStatus) -> list[int]:
        """Ids of the tasks ``node`` owns in ``status``, ascending."""
        sql = (f"SELECT {self._col('id')} FROM {self._quote(self.Task._meta.table_name)} "
               f"WHERE {self._col('status')} = {self.db.param} AND {self._col('owner')} = {self.db.param} "
               f"ORDER BY {self._col('id')}")
        return [r[0] for r in self._read(sql, (status.value, node))]

    def orphan_ids(self, live: Collection[str], after: int, limit: int) -> list[int]:
        """Ids above ``after`` of the unfinished tasks (not SUCCESS, FAILED or CANCELLED) whose
        owner is NULL or not one of ``live``: ascending, at most ``limit``."""
        live = list(live)
        sql = self._orphans_sql(len(live))
        return [r[0] for r in self._read(sql, (after, *_TERMINAL_TEXT, *live, limit))]

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _orphans_sql(self, n_live: int) -> str:
        p, owner = self.db.param, self._col("owner")
        sql = (f"SELECT {self._col('id')} FROM {self._quote(self.Task._meta.table_name)} "
               f"WHERE {self._col('id')} > {p} AND {self._col('status')} NOT IN ({', '.join([p] * len(_TERMINAL_TEXT))})")
        if n_live:
            sql += f" AND ({owner} IS NULL OR {owner} NOT IN ({', '.join([p] * n_live)}))"
        return sql + f" ORDER BY {self._col('id')} LIMIT {p}"

    def due_pending_ids(self, node: str, types: Collection[str], now_ms: int, limit: int) -> list[int]:
        """Ids of the PENDING tasks due by ``now_ms`` (``run_at <= now_ms``) that ``node`` owns, or
        that nobody owns and are of one of ``types``: at most ``limit``, soonest due first.

        Says ``status = 'pending'`` literally: the condition of the partial index on ``run_at``,
        which a bound parameter would not match."""
        types = list(types)
        return [r[0] for r in self._read(self._due_sql(len(types)), (now_ms, node, *types, limit))]

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _due_sql(self, n_types: int) -> str:
        p, owner = self.db.param, self._col("owner")
        mine = f"{owner} = {p}"
        if n_types:
            mine = f"({mine} OR ({owner} IS NULL AND {self._col('type')} IN ({', '.join([p] * n_types)})))"
        return (f"SELECT {self._col('id')} FROM {self._quote(self.Task._meta.table_name)} "
                f"WHERE {self._col('status')} = '{TaskStatus.PENDING.value}' AND {self._col('run_at')} <= {p} "
                f"AND {mine} ORDER BY {self._col('run_at')} LIMIT {p}")

    def claimable_rows(self, types: Collection[str], limit: int) -> list[dict[str, Any]]:
        """The rows (as :meth:`Tx.row` reads them) of unowned NEW or RESTORING tasks of one of
        ``types``, ascending by id, at most ``limit``: what a node may claim."""
        types = list(types)
        if not types:
            return []
        params = (TaskStatus.NEW.value, TaskStatus.RESTORING.value, *types, limit)
        names = self._row_names
        return [dict(zip(names, row)) for row in self._read(self._claimable_sql(len(types)), params)]

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _claimable_sql(self, n_types: int) -> str:
        p = self.db.param
        return (f"{self._select_rows_sql} WHERE {self._col('status')} IN ({p}, {p}) "
                f"AND {self._col('owner')} IS NULL AND {self._col('type')} IN ({', '.join([p] * n_types)}) "
                f"ORDER BY {self._col('id')} LIMIT {p}")

    def cancelling_ids(self, ids: Iterable[int]) -> set[int]:
        """Which of these tasks are CANCELLING."""
        found: set[int] = set()
        for part in self._parts(ids):
            sql = self._list_sql(True, False, False, len(part), False, False, "id")
            found.update(r[0] for r in self._read(sql, (TaskStatus.CANCELLING.value, *part)))
        return found

    def history(self, task_id: int | None = None) -> list[Transition]:
        """Recorded status changes of one task, oldest first; or of every task, task by task in id
        order. Changes recorded in the history table (by earlier versions) are placed among the
        row's entries by time."""
        H = self.History
        legacy = H.select().order_by(H.id)
        if task_id is not None:
            legacy = legacy.where(H.task == task_id)
        old: dict[int, list[Transition]] = {}
        for r in legacy:
            old.setdefault(r.task, []).append(
                Transition(r.task, _status_or_raw(r.from_status), _status_or_raw(r.to_status) or "", r.at))
        table, col, key = self._quote(self.Task._meta.table_name), self._col("history"), self._col("id")
        if task_id is None:
            rows = self._read(f"SELECT {key}, {col} FROM {table} WHERE {col} IS NOT NULL ORDER BY {key}", ())
        else:
            rows = self._read(f"SELECT {key}, {col} FROM {table} WHERE {key} = {self.db.param}", (task_id,))
        new = {tid: _parse_history(tid, text) for tid, text in rows if text}
        # Each source is in the order its changes were made; the table's rows (written by a node of
        # an earlier version, alone or next to today's ones) are placed among the row's entries by
        # time, ties first.
        return [t for tid in sorted(old.keys() | new.keys())
                for t in heapq.merge(old.get(tid, ()), new.get(tid, ()), key=operator.attrgetter("at"))]

    #: task rows rewritten per transaction by :meth:`prune_history`
    PRUNE_BATCH = 500

    def prune_history(self, before_ms: int) -> int:
        """Delete history entries older than ``before_ms``; returns how many.

        The rows are rewritten :attr:`PRUNE_BATCH` at a time, each batch read
        and written in one transaction holding their rows (SQLite's write lock;
        ``FOR UPDATE`` elsewhere), so a change committed meanwhile by another
        node is never lost. Every entry older than the cut goes, wherever it
        is in the row: nodes' clocks may differ.
        """
        H = self.History
        removed = self.write(lambda tx: H.delete().where(H.at < before_ms).execute())
        after: int | None = 0
        while after is not None:
            n, after = self.write(self._prune_rows, before_ms, after)
            removed += n
        return removed

    def _prune_rows(self, tx: Tx, before_ms: int, after: int) -> tuple[int, int | None]:
        table, col, key = self._quote(self.Task._meta.table_name), self._col("history"), self._col("id")
        p = self.db.param
        lock = "" if self.is_sqlite else " FOR UPDATE"
        rows = tx._exec(f"SELECT {key}, {col} FROM {table} WHERE {key} > {p} AND {col} IS NOT NULL "
                        f"ORDER BY {key} LIMIT {self.PRUNE_BATCH}{lock}", (after,)).fetchall()
        removed = 0
        for tid, text in rows:
            lines = text.split("\n")[:-1]
            kept = [line for line in lines if _entry_at(line) >= before_ms]
            if len(kept) != len(lines):
                removed += len(lines) - len(kept)
                tx.execute(f"UPDATE {table} SET {col} = {p} WHERE {key} = {p}",
                           ("".join(line + "\n" for line in kept) or None, tid))
        return removed, (rows[-1][0] if len(rows) == self.PRUNE_BATCH else None)

    # --------------------------------------------------------------- writes
    def add_listener(self, fn: Callable[[list[tuple[int, Any, TaskStatus]]], None]) -> None:
        """Call ``fn(changes)`` after each commit with the ``(task_id, from, to)`` it made durable."""
        self._listeners.append(fn)

    def write(self, fn: Callable[..., T], *args: Any, savepoint: bool = True) -> T:
        """Run ``fn(tx, *args)`` in a write transaction; return its result once committed.

        ``savepoint=False`` is for an operation that refuses (raises a
        :class:`~taskmgr.errors.TaskManagerError`) only before its first
        write: it then runs without a savepoint of its own, two statements
        fewer. One that breaks that promise costs its batch a second run,
        with the savepoint.
        """
        op = _Op(fn, args, savepoint)
        if self._closed:
            raise StoreError("the task store is closed")
        if not self._group:
            with self._sync_lock:
                self._run_batch([op])
            return op.result()  # type: ignore[no-any-return]
        if self._leader == threading.get_ident():  # a callback of the batch just committed writes again
            self._run_batch([op])
            return op.result()  # type: ignore[no-any-return]
        with self._mu:
            self._pending.append(op)
            self._sync_pending += 1
            if self._leading:
                op.event = wait = _allocate_lock()
                wait.acquire()
                batch = None
            else:  # lead, starting with what is queued now
                self._leading = True
                batch = self._take()
        if batch is None:
            wait.acquire()  # released by the leader once the batch is over
        else:
            self._lead(batch)
        return op.result()  # type: ignore[no-any-return]

    def leading_here(self) -> bool:
        """Whether the calling thread is leading a commit (the store is inside its transaction, or
        resolving its batch): a write or a close from it now would wait for itself."""
        return self._leader == threading.get_ident()

    def write_async(
        self, fn: Callable[..., Any], *args: Any, savepoint: bool = True,
        callback: Callable[[bool, Any], None] | None = None,
    ) -> None:
        """Queue ``fn(tx, *args)`` without waiting for it. After its batch is over,
        ``callback(ok, value)`` gets the result (``ok``) or the exception (not ``ok``).

        It is committed with the next :meth:`write` of any thread, or after
        :attr:`LINGER` seconds by the store's flusher thread: an outcome that
        nobody waits for does not cost a commit of its own while others are
        writing.
        """
        op = _Op(fn, args, savepoint, callback)
        if self._closed:
            raise StoreError("the task store is closed")
        if not self._group:
            with self._sync_lock:
                self._run_batch([op])
            return
        op.at = time.monotonic()
        with self._mu:
            self._pending.append(op)
            if self._flusher_idle:
                self._wake.notify()

    def defer(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` just before the next commit, or at once when writes are not a stream.

        For work that must follow a commit already made and is best done while
        the next one syncs: the leader calls it right before its ``COMMIT``,
        whose wait for the disk releases the GIL, so what ``fn`` sets going
        (a worker thread woken to run a task) runs during that wait instead of
        contending with the leader's statements. When the last two commits
        that callers waited for were more than :attr:`DEFER_MAX` apart (no
        stream: nothing says another is coming soon; the flusher's commits of
        outcomes do not count) ``fn`` runs at once, on the calling thread.

        A deferred ``fn`` that no commit picks up (the stream ended) is run by
        the flusher at its first look after it is :attr:`DEFER_MAX` old: a
        millisecond later if the flusher was idle (it is woken), up to
        :attr:`LINGER_MAX` (16 ms) later just after a stream, while it looks
        only that often; the stream's last outcome waits as long. A strict
        bound would need the flusher awake every millisecond during a stream:
        measured, that cost the stream 10%.

        ``fn`` must not write to the store, and what it depends on must be
        committed before it is deferred.
        """
        if not self._group or self._closed or self._commit_gap > self.DEFER_MAX:
            fn()
            return
        with self._mu:
            self._deferred.append((time.monotonic(), fn))
            if self._flusher_idle:
                self._wake.notify()

    def _run_deferred(self, before: float | None = None) -> None:
        """Run the deferred calls (with ``before``, those deferred before that time)."""
        deferred = self._deferred
        while deferred and (before is None or deferred[0][0] < before):
            try:
                _at, fn = deferred.popleft()  # atomic: the leader and the flusher may both be here
            except IndexError:
                return
            try:
                fn()
            except Exception:  # pragma: no cover - a deferred call's bug must not break a commit
                log.exception("deferred call failed")

    def _lead(self, batch: list[_Op] | None = None, force: bool = False) -> None:
        """Run ``batch``, then batches until no caller is waiting (with ``force``, until nothing is
        queued).

        Called by the thread that set ``_leading``; clears it on the way out.
        Asynchronous operations left queued are the flusher's.
        """
        self._leader = threading.get_ident()
        try:
            while True:
                if batch is None:
                    with self._mu:
                        if not self._pending or not (self._sync_pending or force):
                            self._leading = False
                            self._leader = None
                            if self._pending and self._flusher_idle:
                                self._wake.notify()
                            return
                        batch = self._take()
                self._run_batch(batch)
                batch = None
                if not force:  # a caller waited for this commit: a stream is commits callers wait for
                    now = time.monotonic()
                    self._commit_gap, self._last_commit = now - self._last_commit, now
        except BaseException as exc:  # the leader was interrupted (KeyboardInterrupt): fail its batch, let go
            for op in batch or ():
                if op.ok is None:
                    op.resolve(False, StoreError(f"the write was interrupted: {exc!r}"))
            with self._mu:
                self._leading = False
                self._leader = None
                if self._pending:  # hand the rest to the flusher: it leads whatever is queued
                    self._wake.notify()
            raise

    def _take(self) -> list[_Op]:
        """The next batch: everything queued, up to :attr:`MAX_BATCH`. Caller holds ``_mu``."""
        pending = self._pending
        if len(pending) <= self.MAX_BATCH:  # the usual case: take it all
            batch = list(pending)
            pending.clear()
            self._sync_pending = 0
        else:
            batch = [pending.popleft() for _ in range(self.MAX_BATCH)]
            self._sync_pending -= sum(1 for op in batch if op.at == 0.0)
        return batch

    def _flusher_loop(self) -> None:
        """Commit asynchronous operations that nobody else committed in time.

        An operation is due once it has waited ``linger`` seconds. The flusher
        sleeps until the oldest queued one is due; woken by the first one
        after a quiet spell, it then looks by itself, without being woken,
        until the queue has stayed empty for :attr:`FLUSHER_IDLE` seconds.
        ``linger`` adapts, between :attr:`LINGER` and :attr:`LINGER_MAX`: it
        doubles each time the flusher wakes to find nothing due (other
        writers carry the queue, as a stream of submissions carries the
        outcomes, and each wake-up of this thread cost such a stream a GIL
        hand-off: measured, about 15% of its throughput at 1 ms), and falls
        back to :attr:`LINGER` as soon as the flusher has to commit something
        itself or the queue goes quiet.
        """
        quiet_since = time.monotonic()
        linger = self.LINGER
        try:
            while True:
                lead = False
                due_deferred = False
                with self._mu:
                    now = time.monotonic()
                    first = self._pending[0] if self._pending and not self._leading else None
                    if first is not None and (self._closed or first.at == 0.0 or now - first.at >= linger):
                        self._leading = lead = True
                        linger = self.LINGER
                    else:  # nothing of its own to do: others carry the queue, so look less often
                        linger = min(linger * 2, self.LINGER_MAX)
                    pause = linger if first is None else first.at + linger - now  # wake as it comes due
                    if self._deferred:  # a deferred call no commit took in time is the flusher's
                        left = self._deferred[0][0] + self.DEFER_MAX - now
                        due_deferred = left <= 0 or self._closed
                        if due_deferred:  # no commit came for it: the stream is over, look often again
                            linger = self.LINGER
                        pause = min(pause, max(left, 0.0))
                    if self._pending or self._deferred:
                        quiet_since = now
                    elif self._closed:
                        return
                    elif now - quiet_since >= self.FLUSHER_IDLE:
                        self._flusher_idle = True
                        self._wake.wait()
                        self._flusher_idle = False
                        quiet_since = time.monotonic()
                        linger = self.LINGER
                        continue
                if due_deferred:
                    self._run_deferred(before=None if self._closed else now - self.DEFER_MAX + 1e-9)
                if lead:
                    self._lead(force=True)
                elif not due_deferred:
                    time.sleep(pause)
        finally:
            if not self.db.is_closed():
                self.db.close()

    def _checkpointer_loop(self) -> None:
        """Copy the WAL back into the database file, off the writers' path.

        SQLite's own checkpoint runs inside the COMMIT that takes the WAL past
        ``wal_autocheckpoint`` pages: measured, a stream of no-op tasks at
        ``synchronous=NORMAL`` spent a fifth of its time in those commits
        (about one in a hundred, 3 to 5 ms each: the checkpoint first syncs the
        WAL). Here a thread of its own runs a PASSIVE checkpoint (it never
        waits for, nor blocks, readers and writers) every
        :attr:`CHECKPOINT_EVERY` commits, with the GIL released throughout; the
        writers' connections checkpoint themselves only past
        :attr:`CHECKPOINT_BACKSTOP` pages. They still must: under a steady stream
        a PASSIVE checkpoint never catches up with the last commit, and only a
        checkpoint that does lets the next writer start the WAL over from its
        beginning (else the file grows until one does). By then the
        checkpointer has copied nearly all of it, but the writer's checkpoint
        still syncs the WAL and the database file (about 3 ms): so the backstop
        is set high, 6,000 pages, a WAL of up to about 24 MB under a steady
        stream. Measured over 5,000 no-op tasks: 10-15% more tasks/s than
        SQLite's own checkpoints, and 2.5% more than with the backstop at 2,000
        pages (25 such checkpoints per 5,000 tasks; 10 at 6,000). Only at
        NORMAL and OFF: at FULL the WAL is synced by every commit, the
        checkpoint in the commit is cheap, and a concurrent one competes for
        the disk with the commits' syncs (measured: 5-8% slower).
        """
        try:
            while True:
                self._checkpoint_due.wait()
                self._checkpoint_due.clear()
                if self._closed:
                    return
                try:
                    with _wrap_db_errors:
                        self.db.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except Exception as exc:  # noqa: BLE001 - the writers' backstop still bounds the WAL
                    log.warning("background WAL checkpoint failed (%s); the writers checkpoint past %d pages",
                                exc, self.CHECKPOINT_BACKSTOP)
        finally:
            if not self.db.is_closed():
                self.db.close()

    def _run_batch(self, batch: list[_Op]) -> None:
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
                    # PostgreSQL aborts one transaction of a cycle of row locks ("deadlock detected"):
                    # run again, it usually goes through
                    deadlock = "deadlock detected" in str(exc)
                    if deadlock or "locked" in str(exc) or "busy" in str(exc):
                        attempt += 1
                        if attempt <= self.LOCK_RETRIES:
                            log.warning("task store %s, retrying (%d/%d)",
                                        "deadlocked with another transaction" if deadlock else "locked",
                                        attempt, self.LOCK_RETRIES)
                            continue
                        err = StoreError(
                            f"the task database aborted the write as a deadlock {self.LOCK_RETRIES + 1} times "
                            "in a row (row locks taken in opposite orders by another node); nothing was written"
                            if deadlock else
                            "the task database stayed locked: another connection held the write lock "
                            f"through {self.LOCK_RETRIES + 1} busy timeouts; nothing was written"
                        )
                        err.__cause__ = exc
                        return self._fail(batch, err)
                    return self._split_or_fail(batch, exc)
                except Exception as exc:  # a database error or a bug: find the guilty operation
                    return self._split_or_fail(batch, exc)
            tx, outcomes = box[0]
            self._commits += 1  # one writer at a time: the leader, or the holder of the synchronous lock
            if self._commits >= self._checkpoint_at and self._checkpointer is not None:
                self._checkpoint_at = self._commits + self.CHECKPOINT_EVERY
                self._checkpoint_due.set()
            for op, (ok, value) in zip(batch, outcomes):
                op.resolve(ok, value)
            if tx.changes:
                for listener in self._listeners:
                    try:
                        listener(tx.changes)
                    except Exception:  # pragma: no cover - a listener bug must not fail the batch's callers
                        log.exception("task store listener failed")
        except BaseException:
            # An interrupt (KeyboardInterrupt, delivered to the thread leading) once the COMMIT went
            # through, as it returned or while the batch was being resolved: every operation is
            # told its outcome, as committed, before the interrupt goes on (the leader's callers
            # would otherwise hear "interrupted", nothing written, of a change that was).
            if box and box[0][0].committed():
                for op, (ok, value) in zip(batch, box[0][1]):
                    if op.ok is None:
                        op.resolve(ok, value)
            raise

    def _split_or_fail(self, batch: list[_Op], exc: BaseException) -> None:
        if len(batch) > 1:
            for op in batch:
                self._run_batch([op])
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
        self._fail(batch, err)

    @staticmethod
    def _fail(batch: list[_Op], err: BaseException) -> None:
        for op in batch:
            op.resolve(False, err)

    def _attempt(self, batch: list[_Op], box: list[tuple[Tx, list[tuple[bool, Any]]]]) -> None:
        """Run a batch in one transaction, each operation in a savepoint; commit once. The
        transaction and the operations' outcomes go in ``box`` as they come (see _run_batch).

        The transaction is managed by hand rather than with peewee's ``atomic``:
        SQLite rolls a transaction back by itself on some errors (a full disk),
        and ``atomic`` would then answer with "cannot rollback - no transaction
        is active", hiding the real error.
        """
        cursor = self.db.cursor()
        tx = Tx(self, cursor)
        outcomes: list[tuple[bool, Any]] = []
        box.append((tx, outcomes))
        execute = tx._exec
        with _wrap_db_errors:  # the driver's errors become peewee's, as execute_sql would make them
            try:
                execute("BEGIN IMMEDIATE" if self.is_sqlite else "BEGIN")
                # the time of the batch's changes, taken once SQLite's write lock is held: a batch that
                # waited for another process's commit is not dated before it
                tx.now = now_ms(self.clock)
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
                if self._deferred:
                    self._run_deferred()
                tx.state = _COMMITTING
                execute("COMMIT")
            except BaseException as exc:
                if not isinstance(exc, Exception) and tx.committed():
                    raise  # an interrupt as the COMMIT returned: committed (see _run_batch)
                tx.state = _ROLLED_BACK
                try:
                    execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - SQLite may have rolled it back already (a full disk)
                    pass
                raise

    # ---------------------------------------------------------------- nodes
    # A node's liveness is a lease: its heartbeat, written by the DATABASE's clock (not the store's
    # clock, which tests fake), renewed before its own lease_ms runs out, and judged by that
    # lease against the same clock. Several hosts sharing PostgreSQL then agree on who is alive
    # whatever their own clocks say, and nodes with different timeouts judge each other fairly.
    #: the lease of a node registered without one, and the fallback for rows without a lease
    DEFAULT_LEASE = 30.0

    def _db_now(self) -> str:
        """SQL for the database's clock in epoch milliseconds (SQLite: the host's)."""
        if self.is_sqlite:
            return "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"
        return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"

    def register_node(self, node: str, started: int, lease: float = DEFAULT_LEASE,
                      identity: str | None = None) -> None:
        """Record ``node`` (this process) as alive, for ``lease`` seconds unless renewed by
        :meth:`heartbeat`. ``identity`` defaults to :func:`process_identity`.

        :raises InvalidArgument: when ``lease`` is not a positive, finite number of seconds.
        """
        lease_ms = _lease_ms(lease)
        ident = process_identity() if identity is None else identity
        values = (node, socket.gethostname(), os.getpid(), int(started), lease_ms, ident)
        p, table = self.db.param, self._quote(self.Node._meta.table_name)
        cols = ("node", "host", "pid", "started", "lease_ms", "identity")
        sql = (f"INSERT INTO {table} ({', '.join(self._quote(c) for c in cols)}, {self._quote('heartbeat')}) "
               f"VALUES ({', '.join([p] * len(cols))}, {self._db_now()}) ON CONFLICT ({self._quote('node')}) "
               f"DO UPDATE SET " + ", ".join(f"{self._quote(c)} = excluded.{self._quote(c)}"
                                            for c in (*cols[1:], "heartbeat")))
        self.write(lambda tx: tx.execute(sql, values))

    def heartbeat(self, node: str) -> bool:
        """Renew ``node``'s lease (by the database's clock); False when it is not registered (any more)."""
        sql = (f"UPDATE {self._quote(self.Node._meta.table_name)} SET {self._quote('heartbeat')} = {self._db_now()} "
               f"WHERE {self._quote('node')} = {self.db.param}")
        return bool(self.write(lambda tx: tx.execute(sql, (node,)).rowcount))

    def remove_node(self, node: str) -> None:
        """Forget ``node`` (it shut down)."""
        N = self.Node
        self.write(lambda tx: N.delete().where(N.node == node).execute())

    def reap_nodes(self, timeout_ms: int | None = None) -> tuple[set[str], list[str]]:
        """Sort the registered nodes into the living and the dead, and forget the dead.

        A node is dead when its lease ran out by the database's clock
        (``heartbeat + lease_ms < now``; a row without a lease is judged by
        ``timeout_ms``, else :attr:`DEFAULT_LEASE`), or when its process is
        gone, which is checked only for a node on this host whose identity is
        this process's (the same PID namespace and boot; never an empty one).
        Each is removed by a DELETE that checks again that it is still dead
        (its lease still run out; its heartbeat still the one read): a node
        that renewed meanwhile stays. Returns ``(alive, dead)``, ``dead``
        naming only the nodes removed.
        """
        fallback = _lease_ms(self.DEFAULT_LEASE) if timeout_ms is None else int(timeout_ms)
        p, table, q = self.db.param, self._quote(self.Node._meta.table_name), self._quote
        cols = ("node", "host", "pid", "heartbeat", "lease_ms", "identity")
        rows = self._read(f"SELECT {', '.join(q(c) for c in cols)}, {self._db_now()} FROM {table}", ())
        host, me = socket.gethostname(), process_identity()
        doomed: list[tuple[str, int | None]] = []  # (node, None) for an expired lease, (node, heartbeat) for a gone pid
        for name, node_host, pid, beat, lease, ident, now in rows:
            if beat + (lease or fallback) < now:
                doomed.append((name, None))
            elif me and ident == me and node_host == host and not _pid_alive(pid):
                doomed.append((name, beat))
        alive = {row[0] for row in rows}
        if not doomed:
            return alive, []
        expired_sql = (f"DELETE FROM {table} WHERE {q('node')} = {p} AND "
                       f"{q('heartbeat')} + COALESCE(NULLIF({q('lease_ms')}, 0), {p}) < {self._db_now()}")
        gone_sql = f"DELETE FROM {table} WHERE {q('node')} = {p} AND {q('heartbeat')} = {p}"

        def op(tx: Tx) -> list[str]:
            return [name for name, beat in doomed
                    if (tx.execute(expired_sql, (name, fallback)) if beat is None
                        else tx.execute(gone_sql, (name, beat))).rowcount == 1]

        dead = self.write(op)
        return alive - set(dead), dead

    # ---------------------------------------------------------------- close
    def close(self) -> None:
        """Commit every queued write, stop the flusher and close this thread's connection (if the store
        opened the database)."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            with self._mu:
                self._wake.notify()
            self._flusher.join()  # it commits what is still queued, then stops
        self._run_deferred()  # what the flusher did not (a call deferred as it stopped)
        if self._checkpointer is not None:
            self._checkpoint_due.set()
            self._checkpointer.join()
        if self._owns_db and not self.db.is_closed():
            self.db.close()


@functools.lru_cache(maxsize=512)
def _entry_head(frm: Any, to: TaskStatus) -> str:
    """A history entry up to its time: an entry is the JSON array ``[from, to, at]`` and a newline
    (JSON escapes every control character, so a newline ends an entry and nothing else). A
    damaged record's status that is not text (SQLite keeps what it is given) is recorded as text:
    bytes decoded, with their undecodable bytes escaped, anything else as ``str()``."""
    if isinstance(frm, bytes):
        frm = frm.decode("utf-8", "backslashreplace")
    elif frm is not None and not isinstance(frm, (str, TaskStatus)):
        frm = str(frm)
    return json.dumps([_TEXT_OR_RAW.get(frm, frm), _TEXT[to]], separators=(",", ":"))[:-1] + ","


def _entry_at(line: str) -> int:
    try:
        return int(line[line.rindex(",") + 1 : -1])
    except ValueError:
        return 0  # unreadable (altered by hand): as old as can be


def _parse_history(task_id: int, text: str) -> list[Transition]:
    out = []
    for line in text.split("\n")[:-1]:
        try:
            frm, to, at = json.loads(line)
        except (ValueError, TypeError):
            log.warning("task %d: a history entry that is not a JSON array [from, to, at] is skipped: %r",
                        task_id, line)
            continue
        out.append(Transition(task_id, _status_or_raw(frm), _status_or_raw(to) or "", at))
    return out


def _lease_ms(lease: Any) -> int:
    """A lease in seconds as whole milliseconds (at least one)."""
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease < 10**9:
        raise InvalidArgument(f"a node's lease must be a positive, finite number of seconds, got {lease!r}")
    return max(1, int(lease * 1000))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _status_or_raw(value: str | None) -> TaskStatus | str | None:
    if value is None:
        return None
    try:
        return TaskStatus(value)
    except ValueError:
        return value


def _to_task(found: Sequence[Any]) -> Task:
    """A :class:`Task` from its columns read in :data:`_TASK_FIELDS` order (no row dict: it cost a
    fifth of a ``get``); a status that is not one of the twelve reads as UNKNOWN."""
    return Task(found[0], found[1], found[2], _BY_TEXT.get(found[3], TaskStatus.UNKNOWN), *found[4:])
