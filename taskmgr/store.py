"""The store's face: open a task database, write to it, read from it, close it.

:class:`Store` is thin over the rooms behind it, each with one job:

- ``_models``: the peewee models, declared once and bound to each store's database;
- ``_schema``: the schema's version, made or migrated at open (``_migrations``: the steps);
- ``_sql``: the statements of the task table, built once per shape, run by the driver;
- ``_tx``: :class:`Tx`, the transaction verbs and the compare-and-set;
- ``_batch``: one batch in one transaction (savepoints, retries, interrupts);
- ``_commit``: the group-commit engine (queue, leader, flusher, deferred calls);
- ``_checkpoint``: the background WAL checkpointer;
- ``_reads``: tasks by id, the planner of lists, the manager's named queries;
- ``_history``: each task's status changes in its row, read and pruned;
- ``_leases``: the registry of nodes, alive by a lease on the database's clock.

Guarantees: a caller of :meth:`Store.write` never hears "done" before its
change is durable; every status change is a compare-and-set recorded in the
row's history by the same statement; operations fail alone; reads never wait
for writers. Entered by any thread; :meth:`Store.close` once, by the owner.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

from peewee import Database, SqliteDatabase

from ._batch import BatchRunner, Listener
from ._checkpoint import Checkpointer
from ._commit import DeferredCalls, GroupCommit, ReadOnlyCommit, SyncCommit
from ._history import History
from ._leases import NodeRegistry, lease_ms, process_identity
from ._models import NodeRecord, TaskRecord, bound, now_ms
from ._reads import Reads
from ._schema import check_readable, open_schema, probe_file
from ._sql import Statements
from ._tx import NOBODY, Tx, held
from .errors import InvalidArgument, StoreError
from .status import TaskStatus
from .task import Task, Transition

__all__ = ["Store", "Tx", "TaskRecord", "NodeRecord", "NOBODY", "held", "now_ms",
           "open_sqlite", "process_identity"]

T = TypeVar("T")

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
#: the longest busy timeout, in seconds: SQLite keeps it in a C int of milliseconds
_MAX_BUSY_TIMEOUT = 2_147_483


def _check_busy_timeout(value: Any) -> float:
    """``value`` as seconds to wait for another connection's write lock.

    :raises InvalidArgument: unless it is a positive, finite number of seconds, at most 24 days.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= _MAX_BUSY_TIMEOUT:
        raise InvalidArgument(f"busy_timeout must be a positive, finite number of seconds (at most "
                              f"{_MAX_BUSY_TIMEOUT}), got {value!r}")
    return float(value)


def open_sqlite(
    path: str | os.PathLike[str], synchronous: str, busy_timeout: float, autocheckpoint: int | None = None,
    readonly: bool = False,
) -> SqliteDatabase:
    """Open (creating it owner-only if missing) the SQLite file at ``path`` in WAL mode.

    ``autocheckpoint``: the WAL size, in pages, past which a committing
    connection checkpoints by itself (SQLite's ``wal_autocheckpoint``;
    None leaves SQLite's default, 1000).

    ``readonly``: open the existing file read-only (a ``mode=ro`` URI and
    ``PRAGMA query_only``): it is never created, nor its journal mode changed.
    A WAL file on a read-only filesystem is opened ``immutable``: no process
    can be writing it there (a writer must create its ``-wal`` file).

    An existing file is first checked, on a connection that changes nothing.

    :raises StoreError: read-only, when there is no file at ``path``; when the file is not a
        SQLite database, or holds another application's tables by taskmgr's names.
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
    busy_timeout = _check_busy_timeout(busy_timeout)
    if readonly:
        return SqliteDatabase(_readonly_uri(path), uri=True, timeout=busy_timeout,
                              pragmas=[("query_only", 1), ("cache_size", -16000)])
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InvalidArgument(f"cannot create database {path!r}: directory {parent!r} does not exist")
    probe_file(path, repr(path), busy_timeout)  # before the pragmas below change the file (WAL)
    try:  # create owner-only; SQLite gives the -wal and -shm files the same mode
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    pragmas: list[tuple[str, Any]] = [("journal_mode", "wal"), ("synchronous", sync), ("cache_size", -16000)]
    if autocheckpoint is not None:
        pragmas.append(("wal_autocheckpoint", autocheckpoint))
    return SqliteDatabase(path, pragmas=pragmas, timeout=busy_timeout)


def _readonly_uri(path: str) -> str:
    """The URI that opens ``path`` read-only: ``mode=ro``, or also ``immutable`` where SQLite cannot
    open its shared memory file (a WAL file on a read-only filesystem)."""
    if not os.path.isfile(path):
        raise StoreError(f"no task database at {path!r}: a read-only open never creates one")
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "unable to open" not in str(exc):
            return uri  # (another error: the store's own reads report it)
        return uri + "&immutable=1"
    except sqlite3.DatabaseError:
        pass  # not a database: the store's check says so
    return uri


class Store:
    """A task database: the models bound to it, its write queue, and its queries.

    :param database: a file path (SQLite, created owner-only if missing) or an
        open peewee :class:`~peewee.Database` (SQLite or PostgreSQL) that the
        host owns; the store then neither sets its pragmas nor closes it.
    :param synchronous: SQLite's ``synchronous`` for a path: ``"FULL"`` (the
        default: a commit survives power loss) or ``"NORMAL"`` (survives a
        crash of the process, may lose the last commits on power loss).
    :param busy_timeout: seconds a connection waits for another's write lock; a
        write still blocked after about that long fails with StoreError.
    :param history: record every status change (in each task's row).
    :param group_commit: share transactions between concurrent writers (the
        default), or run each write alone, at once, on the calling thread.
    :param clock: the time source of the tasks' times, seconds since the epoch
        (never of the nodes' liveness: that is the database's clock).
    :param readonly: read, never write: nothing is created, changed or migrated
        (a SQLite file is opened read-only and must exist), no thread runs, and
        every write raises :class:`~taskmgr.errors.StoreError`. The database
        must be a taskmgr database of this version.

    The knobs below are read at each use, from the class or the instance.
    """

    #: how many times a batch is retried on a lock error (within busy_timeout), or a deadlock
    LOCK_RETRIES = 3
    #: most operations in one transaction
    MAX_BATCH = 2048
    #: seconds an asynchronous write waits for another write to share its commit (at least)
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
    #: commits between two checkpoints of the background checkpointer
    CHECKPOINT_EVERY = 100
    #: WAL pages past which a committing connection checkpoints by itself all the same (where the
    #: checkpointer runs)
    CHECKPOINT_BACKSTOP = 6000
    #: task rows rewritten per transaction by :meth:`prune_history`
    PRUNE_BATCH = 500
    #: the lease of a node registered without one, and the fallback for rows without a lease
    DEFAULT_LEASE = 30.0

    def __init__(
        self,
        database: str | os.PathLike[str] | Database,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        history: bool = True,
        group_commit: bool = True,
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
    ) -> None:
        busy_timeout = _check_busy_timeout(busy_timeout)  # before anything is opened
        background = False  # checkpoint on a thread of the store's own (see _checkpoint)
        if isinstance(database, Database):
            self.db = database
            self._owns_db = False
        elif isinstance(database, (str, os.PathLike)):
            # At FULL the checkpoint stays in the committing connection: the WAL is already synced there
            background = group_commit and not readonly and str(synchronous).upper() in ("NORMAL", "OFF")
            self.db = open_sqlite(database, synchronous, busy_timeout,
                                  self.CHECKPOINT_BACKSTOP if background else None, readonly=readonly)
            self._owns_db = True
        else:
            raise InvalidArgument(
                f"database must be a file path or a peewee Database, got {type(database).__name__}"
            )
        self.is_sqlite = isinstance(self.db, SqliteDatabase)
        self.Task: Any = bound(TaskRecord, self.db)
        self.Node: Any = bound(NodeRecord, self.db)
        where = repr(os.fspath(database)) if isinstance(database, (str, os.PathLike)) else repr(self.db.database)
        #: the schema version of the database (always the code's, once open)
        self.schema_version = (check_readable(self.db, self.Task, where) if readonly
                               else open_schema(self.db, self.Task, self.Node, where))
        self._sql = Statements(self.db, self.Task, self.Node, history)
        deferred = DeferredCalls()
        self._checkpointer = Checkpointer(self.db, self) if self._owns_db and background else None
        self._runner = BatchRunner(self._sql, clock, deferred, self, busy_timeout,
                                   None if self._checkpointer is None else self._checkpointer.note_commit)
        self._engine: GroupCommit | SyncCommit | ReadOnlyCommit
        if readonly:
            self._engine = ReadOnlyCommit(where)
        elif group_commit:
            self._engine = GroupCommit(self._runner, deferred, self)
        else:
            self._engine = SyncCommit(self._runner)
        self._reads = Reads(self._sql, self.Task, self)
        # the rooms write through write() as looked up at each call: a host or a test may wrap it
        self._history = History(self._sql, self._reads.read, self._write_now, self)
        self._leases = NodeRegistry(self.db, self.Node, self._reads.read, self._write_now, self.is_sqlite)

    def _write_now(self, fn: Callable[..., T], *args: Any) -> T:
        return self.write(fn, *args)

    # ------------------------------------------------------------------ what it is
    @property
    def readonly(self) -> bool:
        """Whether the store was opened read-only (every write raises StoreError)."""
        return isinstance(self._engine, ReadOnlyCommit)

    @property
    def history_enabled(self) -> bool:
        """Whether every status change is recorded in the task's row."""
        return bool(self._sql.history)

    @property
    def returning(self) -> bool:
        """Whether a batch insert returns its ids (``INSERT ... RETURNING``, PostgreSQL)."""
        return bool(self._sql.returning)

    @property
    def update_returning(self) -> bool:
        """Whether a move can return its row in one statement (``UPDATE ... RETURNING``)."""
        return bool(self._sql.update_returning)

    @property
    def checkpoints(self) -> int:
        """Checkpoints the background checkpointer ran (0 where it does not run)."""
        return 0 if self._checkpointer is None else self._checkpointer.count

    @property
    def threads(self) -> list[Any]:
        """The store's own threads still alive: the flusher (with group commit) and the
        checkpointer (a SQLite file the store opened at NORMAL or OFF). None after :meth:`close`."""
        found = self._engine.threads()
        return found if self._checkpointer is None else found + self._checkpointer.threads()

    @property
    def queued(self) -> int:
        """Operations waiting in the write queue for a batch."""
        return self._engine.queued

    @property
    def committing(self) -> bool:
        """Whether a batch is being committed now (a thread leads one)."""
        return self._engine.committing

    @property
    def list_shapes(self) -> int:
        """How many list statements have been built (the cache is shared by the stores of a process)."""
        return int(Reads.list_sql.cache_info().currsize)

    # ------------------------------------------------------------------ reads
    def get(self, task_id: int, graphspace: str | None = None, graph: str | None = None) -> Task | None:
        """The task (in that graph, if named), or ``None``."""
        return self._reads.get(task_id, graphspace, graph)

    def select(self, *, status: TaskStatus | None = None, graphspace: str | None = None, graph: str | None = None,
               ids: Iterable[int] | None = None, after: int = 0, limit: int = -1) -> list[Task]:
        """Tasks matching every given filter, in ascending id order, ids above ``after``, at most
        ``limit`` (all when negative). A list over part of a graph's scope neither scans the table
        nor sorts every match (see :mod:`taskmgr._reads`)."""
        return self._reads.select(status, graphspace, graph, ids, after, limit)

    def statuses(self, ids: Iterable[int]) -> dict[int, TaskStatus]:
        """The status of each of these tasks that exists (UNKNOWN for a damaged one): two columns
        of each row, about a sixth of the cost of reading the tasks."""
        return self._reads.statuses(ids)

    def graphspaces(self) -> list[str]:
        """The graphspaces that have tasks, in order (one index seek each)."""
        return self._reads.graphspaces()

    def graphs(self, graphspace: str) -> list[str]:
        """The graphs of ``graphspace`` that have tasks, in order (one index seek each)."""
        return self._reads.graphs(graphspace)

    def ids_where(self, *conds: Any, limit: int | None = None, order_by: Any = None) -> list[int]:
        """Ids of the tasks matching peewee conditions on :attr:`Task`, ascending (or by ``order_by``)."""
        return self._reads.ids_where(*conds, limit=limit, order_by=order_by)

    def rows_where(self, *conds: Any, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows matching peewee conditions on :attr:`Task`, ascending by id."""
        return self._reads.rows_where(*conds, limit=limit)

    def owned_ids(self, node: str, status: TaskStatus) -> list[int]:
        """Ids of the tasks ``node`` owns in ``status``, ascending."""
        return self._reads.owned_ids(node, status)

    def orphan_ids(self, live: Collection[str], after: int, limit: int) -> list[int]:
        """Ids above ``after`` of the unfinished tasks (not SUCCESS, FAILED or CANCELLED) whose
        owner is NULL or not one of ``live``: ascending, at most ``limit``."""
        return self._reads.orphan_ids(live, after, limit)

    def due_pending_ids(self, node: str, types: Collection[str], now_ms: int, limit: int) -> list[int]:
        """Ids of the PENDING tasks due by ``now_ms`` (``run_at <= now_ms``) that ``node`` owns, or
        that nobody owns and are of one of ``types``: at most ``limit``, soonest due first."""
        return self._reads.due_pending_ids(node, types, now_ms, limit)

    def claimable_rows(self, types: Collection[str], limit: int) -> list[dict[str, Any]]:
        """The rows (as :meth:`Tx.row` reads them) of unowned NEW or RESTORING tasks of one of
        ``types``, ascending by id, at most ``limit``: what a node may claim."""
        return self._reads.claimable_rows(types, limit)

    def cancelling_ids(self, ids: Iterable[int]) -> set[int]:
        """Which of these tasks are CANCELLING."""
        return self._reads.cancelling_ids(ids)

    def history(self, task_id: int | None = None) -> list[Transition]:
        """Recorded status changes of one task, oldest first; or of every task, task by task in id
        order."""
        return self._history.read(task_id)

    def prune_history(self, before_ms: int) -> int:
        """Delete history entries older than ``before_ms``; returns how many. The rows are
        rewritten :attr:`PRUNE_BATCH` at a time, each batch in one transaction holding them, so a
        change committed meanwhile by another node is never lost."""
        return self._history.prune(before_ms)

    # ------------------------------------------------------------------ writes
    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(changes)`` after each commit with the ``(task_id, from, to)`` it made durable."""
        self._runner.listeners.append(fn)

    def write(self, fn: Callable[..., T], *args: Any, savepoint: bool = True) -> T:
        """Run ``fn(tx, *args)`` in a write transaction; return its result once committed.

        ``savepoint=False`` is for an operation that refuses (raises a
        :class:`~taskmgr.errors.TaskManagerError`) only before its first
        write: it then runs without a savepoint of its own, two statements
        fewer. One that breaks that promise costs its batch a second run,
        with the savepoint.
        """
        return self._engine.write(fn, args, savepoint)

    def write_async(self, fn: Callable[..., Any], *args: Any, savepoint: bool = True,
                    callback: Callable[[bool, Any], None] | None = None) -> None:
        """Queue ``fn(tx, *args)`` without waiting for it. After its batch is over,
        ``callback(ok, value)`` gets the result (``ok``) or the exception (not ``ok``).

        It is committed with the next :meth:`write` of any thread, or after :attr:`LINGER` seconds
        by the store's flusher thread: an outcome that nobody waits for does not cost a commit of
        its own while others are writing.
        """
        self._engine.write_async(fn, args, savepoint, callback)

    def defer(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` just before the next commit, or at once when writes are not a stream.

        For work that must follow a commit already made and is best done while the next one
        syncs: the leader calls it right before its ``COMMIT``, whose wait for the disk releases
        the GIL. When the last two commits that callers waited for were more than
        :attr:`DEFER_MAX` apart, or without group commit, ``fn`` runs at once, on the calling
        thread. One that no commit picks up is run by the flusher, up to :attr:`LINGER_MAX` later.
        ``fn`` must not write to the store, and what it depends on must be committed before.
        """
        self._engine.defer(fn)

    def leading_here(self) -> bool:
        """Whether the calling thread is leading a commit (the store is inside its transaction, or
        resolving its batch): a write or a close from it now would wait for itself."""
        return self._engine.leading_here()

    # ------------------------------------------------------------------ nodes
    def register_node(self, node: str, started: int, lease: float = DEFAULT_LEASE,
                      identity: str | None = None) -> None:
        """Record ``node`` (this process) as alive, for ``lease`` seconds unless renewed by
        :meth:`heartbeat`; ``identity`` defaults to :func:`process_identity`.

        :raises InvalidArgument: when ``lease`` is not a positive, finite number of seconds.
        """
        self._leases.register(node, started, lease, identity)

    def heartbeat(self, node: str) -> bool:
        """Renew ``node``'s lease (by the database's clock); False when it is not registered (any more)."""
        return self._leases.heartbeat(node)

    def remove_node(self, node: str) -> None:
        """Forget ``node`` (it shut down)."""
        self._leases.remove(node)

    def expire_node(self, node: str) -> None:
        """End ``node``'s lease at once, as if it had stopped renewing it long ago: the next node
        to look takes its tasks over (a node that abandons its running callables)."""
        self._leases.expire(node)

    def reap_nodes(self, timeout_ms: int | None = None) -> tuple[set[str], list[str]]:
        """Sort the registered nodes into the living and the dead, and forget the dead.

        Each node is judged by its own lease against the database's clock (a
        row without one by ``timeout_ms``, else :attr:`DEFAULT_LEASE`); a node
        of this host whose process is gone is dead at once, when its identity
        is this process's. Each is removed by a DELETE that re-checks it is
        still dead. Returns ``(alive, dead)``, ``dead`` naming only the nodes
        removed.
        """
        fallback = lease_ms(self.DEFAULT_LEASE) if timeout_ms is None else int(timeout_ms)
        return self._leases.reap(fallback)

    # ------------------------------------------------------------------ close
    def close(self) -> None:
        """Commit every queued write, stop the store's threads and close this thread's connection
        (if the store opened the database). Called again, from another thread, it closes that
        thread's connection."""
        if not self._engine.closed:
            self._engine.close()
            if self._checkpointer is not None:
                self._checkpointer.close()
        if self._owns_db and not self.db.is_closed():
            self.db.close()

