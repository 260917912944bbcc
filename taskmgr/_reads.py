"""The store's reads: tasks by id, the planner of lists, and the named queries of the manager.

Owns every read of the task table outside a transaction. Reads never wait for
writers: each runs on the calling thread's own connection (SQLite in WAL mode
lets readers and a writer proceed together), by the driver alone.

The planner (:meth:`Reads.select`): the indexes that list tasks in id order
start with ``(graphspace, graph)`` (with the status first, for a status). A
list that fixes only part of that prefix (a graph without its graphspace, a
graphspace alone, a status alone) would scan the table or sort every match;
instead the pairs that exist are found by walking the index (one seek per
distinct value), each pair's ids are read from the index alone, the sorted
lists are merged, and only the rows of the first ``limit`` ids are read.

The named queries (:meth:`owned_ids`, :meth:`orphan_ids`, ...) are what the
manager asks of the store by name, so that the schema never leaks out of it.

Invariants: every list is in ascending id order (the due tasks: soonest
first); a read never fails on a damaged row (a status that is not one of the
twelve, a BLOB or a wrong type in a column: SQLite keeps what it is given):
it reads as an UNKNOWN task whose result says ``DamagedRecord: ...``, every
field of its contract type. Entered by any thread.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from ._models import BY_TEXT, TASK_FIELDS, TERMINAL_TEXT
from ._sql import Statements, driver_read
from .status import TaskStatus
from .task import Task


def to_task(found: Sequence[Any]) -> Task:
    """A :class:`Task` from its columns read in :data:`TASK_FIELDS` order (no row dict: it cost a
    fifth of a ``get``). A row that holds what its columns cannot (a damaged file: SQLite keeps
    what it is given) reads as :func:`damaged_task`; the check is a few type tests, on every row."""
    status = BY_TEXT.get(found[3])
    if (status is not None
            and type(found[4]) is type(found[5]) is type(found[6]) is type(found[8]) is int
            and type(found[1]) is type(found[2]) is type(found[9]) is type(found[11]) is type(found[12]) is str
            and (found[7] is None or type(found[7]) is str) and (found[10] is None or type(found[10]) is str)):
        return Task(found[0], found[1], found[2], status, *found[4:])
    return damaged_task(found)


def to_task_typed(found: Sequence[Any]) -> Task:
    """:func:`to_task` for a database that enforces its column types (PostgreSQL): the status alone
    is checked."""
    status = BY_TEXT.get(found[3])
    if status is not None:
        return Task(found[0], found[1], found[2], status, *found[4:])
    return damaged_task(found)


_INTEGERS = frozenset(("id", "progress", "created", "updated", "retries"))
_OPTIONAL = frozenset(("result", "input"))


def damaged_task(found: Sequence[Any]) -> Task:
    """The Task of a row some of whose columns hold the wrong type: UNKNOWN, its ``result`` saying
    which column holds what (``DamagedRecord: progress holds text 'abc', not an integer``), every
    field of the contract's type (a wrong integer reads 0, a BLOB where text belongs is decoded)."""
    values: dict[str, Any] = {}
    why: list[str] = []
    for name, value in zip(TASK_FIELDS, found):
        if name == "status":
            if BY_TEXT.get(value) is None:
                why.append(f"stored status {value!r} is not valid")
        elif name in _INTEGERS:
            if type(value) is not int:
                why.append(f"{name} holds {_what(value)}, not an integer")
                value = int(value) if type(value) is float and value == value and abs(value) < 2**63 else 0
        elif value is None and name in _OPTIONAL:
            pass
        elif type(value) is not str:
            why.append(f"{name} holds {_what(value)}, not text")
            value = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else (
                None if name in _OPTIONAL else "")
        values[name] = value
    values["status"] = TaskStatus.UNKNOWN
    values["result"] = "DamagedRecord: " + "; ".join(why)
    return Task(**values)


def _what(value: Any) -> str:
    if isinstance(value, bytes):
        return f"a BLOB of {len(value)} bytes"
    if isinstance(value, str):
        return f"text {value[:40]!r}"
    if isinstance(value, float):
        return f"the real number {value!r}"
    return "NULL" if value is None else f"{type(value).__name__} {value!r}"


class Reads:
    """The reads of one store. ``tuning`` is where ``MERGE_BY_IDS`` and ``IDS_PER_READ`` are read
    at each use (the store, whose class or instance a host or a test may set them on)."""

    def __init__(self, sql: Statements, task_model: Any, tuning: Any) -> None:
        self._sql = sql
        self._task = task_model
        self._tuning = tuning
        #: a row's Task: SQLite keeps any type in any column, so its rows are checked
        self._to_task = to_task if sql.is_sqlite else to_task_typed

    def read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of one read on this thread's connection, by the driver alone."""
        return driver_read(self._sql.db, sql, params)

    # ------------------------------------------------------------------ tasks
    def get(self, task_id: int, graphspace: str | None = None, graph: str | None = None) -> Task | None:
        """The task (in that graph, if named), or ``None``."""
        rows = self.read(self._sql.task_by_id, (task_id,))
        if not rows:
            return None
        task = self._to_task(rows[0])
        if (graphspace is not None and task.graphspace != graphspace) or (graph is not None and task.graph != graph):
            return None
        return task

    def select(self, status: TaskStatus | None, graphspace: str | None, graph: str | None,
               ids: Iterable[int] | None, after: int, limit: int) -> list[Task]:
        """Tasks matching every given filter, in ascending id order, ids above ``after`` (see the
        planner in the module docs)."""
        partial = graph is None or graphspace is None
        if ids is None and partial and not (graph is None and graphspace is None and status is None):
            pairs = self._pairs(graphspace, graph)
            if len(pairs) != 1:
                if limit < 0 or limit > self._tuning.MERGE_BY_IDS:  # a long list: merge the tasks themselves
                    found = [self._select(status, gs, g, None, after, limit) for gs, g in pairs]
                    merged = heapq.merge(*found, key=lambda t: t.id)
                    return list(merged if limit < 0 else itertools.islice(merged, limit))
                chosen = list(itertools.islice(heapq.merge(*(self._ids(status, gs, g, after, limit)
                                                             for gs, g in pairs)), limit))
                return self._select(None, None, None, chosen, 0, -1) if chosen else []
            graphspace, graph = pairs[0]
        return self._select(status, graphspace, graph, ids, after, limit)

    def statuses(self, ids: Iterable[int]) -> dict[int, TaskStatus]:
        """The status of each of these tasks that exists (UNKNOWN for a damaged one)."""
        found: dict[int, TaskStatus] = {}
        for part in self._parts(ids):
            sql = self.list_sql(False, False, False, len(part), False, False, "status")
            for task_id, text in self.read(sql, part):
                found[task_id] = BY_TEXT.get(text, TaskStatus.UNKNOWN)
        return found

    def graphspaces(self) -> list[str]:
        """The graphspaces that have tasks, in order."""
        return self._distinct("graphspace")

    def graphs(self, graphspace: str) -> list[str]:
        """The graphs of ``graphspace`` that have tasks, in order."""
        return self._distinct("graph", graphspace)

    # ------------------------------------------------------------------ the planner's parts
    def _pairs(self, graphspace: str | None, graph: str | None) -> list[tuple[str, str]]:
        """The (graphspace, graph) pairs that have tasks, within what is named (one of the two, or
        neither)."""
        if graphspace is not None:
            return [(graphspace, g) for g in self.graphs(graphspace)]
        if graph is not None:
            return [(gs, graph) for gs in self.graphspaces() if self._has(gs, graph)]
        return [(gs, g) for gs in self.graphspaces() for g in self.graphs(gs)]

    def _ids(self, status: TaskStatus | None, graphspace: str, graph: str, after: int, limit: int) -> list[int]:
        """Ids of one graph's tasks (with that status), above ``after``: an index-only read."""
        head = () if status is None else (status.value,)
        sql = self.list_sql(status is not None, True, True, -1, True, True, "id")
        return [r[0] for r in self.read(sql, (*head, graphspace, graph, after, limit))]

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
        """``ids`` sorted, without repeats, in parts of at most ``IDS_PER_READ``, each padded (with
        its last id again) to a power of two: a list of any length is read by one of ten
        statements, prepared once, and stays under the database's limit on parameters."""
        id_list = sorted(set(ids))
        per_read = self._tuning.IDS_PER_READ
        for start in range(0, len(id_list), per_read):
            part = id_list[start:start + per_read]
            yield part + part[-1:] * ((1 << (len(part) - 1).bit_length()) - len(part))

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
        sql = self.list_sql(status is not None, graphspace is not None, graph is not None,
                            -1 if id_list is None else len(id_list), bool(after), limit >= 0, "task")
        to_task = self._to_task
        return [to_task(found) for found in self.read(sql, params)]

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one Reads lives as long as its store
    def list_sql(self, status: bool, graphspace: bool, graph: bool, n_ids: int, after: bool, limit: bool,
                 what: str) -> str:
        """The SELECT of a list, the conditions given taking their parameters in this order: status,
        graphspace, graph, ``n_ids`` ids (none when negative), the id to start after, the limit.
        ``what`` is ``"id"`` (read from the index alone), ``"status"`` (the id and the status) or
        ``"task"`` (a Task's columns). Built once per shape."""
        s, p = self._sql, self._sql.db.param
        conds = [f"{s.col(name)} = {p}" for name, on in (("status", status), ("graphspace", graphspace),
                                                          ("graph", graph)) if on]
        if n_ids >= 0:
            conds.append(f"{s.col('id')} IN ({', '.join([p] * n_ids)})")
        if after:
            conds.append(f"{s.col('id')} > {p}")
        names = {"id": ("id",), "status": ("id", "status")}.get(what, TASK_FIELDS)
        sql = f"SELECT {', '.join(s.col(name) for name in names)} FROM {s.table}"
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        sql += f" ORDER BY {s.col('id')}"
        return sql + f" LIMIT {p}" if limit else sql

    def _distinct(self, column: str, graphspace: str | None = None) -> list[str]:
        """The distinct graphspaces (or graphs of ``graphspace``), by one index seek per value: a
        recursive query walking the ``(graphspace, graph, ...)`` index, where ``SELECT DISTINCT``
        would read every entry."""
        s, p = self._sql, self._sql.db.param
        col = s.col(column)
        where, params = "", ()  # type: str, tuple[str, ...]
        if graphspace is not None:
            where, params = f"{s.col('graphspace')} = {p}", (graphspace,)
        first = f"SELECT MIN({col}) FROM {s.table}" + (f" WHERE {where}" if where else "")
        then = f"SELECT MIN({col}) FROM {s.table} WHERE " + (f"{where} AND " if where else "") + f"{col} > walk.v"
        sql = (f"WITH RECURSIVE walk(v) AS ({first} UNION ALL SELECT ({then}) FROM walk WHERE walk.v IS NOT NULL) "
               "SELECT v FROM walk WHERE v IS NOT NULL")
        return [r[0] for r in s.db.execute_sql(sql, (*params, *params))]

    def _has(self, graphspace: str, graph: str) -> bool:
        T = self._task
        return bool(T.select(T.id).where(T.graphspace == graphspace, T.graph == graph).limit(1).exists())

    # ------------------------------------------------------------------ by peewee conditions
    def ids_where(self, *conds: Any, limit: int | None = None, order_by: Any = None) -> list[int]:
        """Ids of the tasks matching peewee conditions on the task model, ascending (or by ``order_by``)."""
        T = self._task
        q = T.select(T.id).where(*conds).order_by(T.id if order_by is None else order_by)
        if limit is not None:
            q = q.limit(limit)
        sql, params = q.sql()
        return [r[0] for r in self.read(sql, params)]  # by the driver: peewee's per-row work cost 5 us an id

    def rows_where(self, *conds: Any, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows matching peewee conditions on the task model, ascending by id."""
        T = self._task
        q = T.select(*[T._meta.fields[n] for n in self._sql.row_names]).where(*conds).order_by(T.id)
        if limit is not None:
            q = q.limit(limit)
        sql, params = q.sql()
        names = self._sql.row_names
        return [dict(zip(names, row)) for row in self._sql.db.execute_sql(sql, params)]

    # ------------------------------------------------------------------ named queries
    def owned_ids(self, node: str, status: TaskStatus) -> list[int]:
        """Ids of the tasks ``node`` owns in ``status``, ascending."""
        s, p = self._sql, self._sql.db.param
        sql = (f"SELECT {s.col('id')} FROM {s.table} WHERE {s.col('status')} = {p} AND {s.col('owner')} = {p} "
               f"ORDER BY {s.col('id')}")
        return [r[0] for r in self.read(sql, (status.value, node))]

    def orphan_ids(self, live: Collection[str], after: int, limit: int) -> list[int]:
        """Ids above ``after`` of the unfinished tasks whose owner is NULL or not in ``live``:
        ascending, at most ``limit``."""
        live = list(live)
        return [r[0] for r in self.read(self._orphans_sql(len(live)), (after, *TERMINAL_TEXT, *live, limit))]

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _orphans_sql(self, n_live: int) -> str:
        s, p = self._sql, self._sql.db.param
        owner = s.col("owner")
        sql = (f"SELECT {s.col('id')} FROM {s.table} WHERE {s.col('id')} > {p} "
               f"AND {s.col('status')} NOT IN ({', '.join([p] * len(TERMINAL_TEXT))})")
        if n_live:
            sql += f" AND ({owner} IS NULL OR {owner} NOT IN ({', '.join([p] * n_live)}))"
        return sql + f" ORDER BY {s.col('id')} LIMIT {p}"

    def due_pending_ids(self, node: str, types: Collection[str], now_ms: int, limit: int) -> list[int]:
        """Ids of the PENDING tasks due by ``now_ms`` that ``node`` owns, or that nobody owns and
        are of one of ``types``: at most ``limit``, soonest due first. Says ``status = 'pending'``
        literally: the partial index's condition, which a bound parameter would not match."""
        types = list(types)
        return [r[0] for r in self.read(self._due_sql(len(types)), (now_ms, node, *types, limit))]

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _due_sql(self, n_types: int) -> str:
        s, p = self._sql, self._sql.db.param
        owner = s.col("owner")
        mine = f"{owner} = {p}"
        if n_types:
            mine = f"({mine} OR ({owner} IS NULL AND {s.col('type')} IN ({', '.join([p] * n_types)})))"
        return (f"SELECT {s.col('id')} FROM {s.table} WHERE {s.col('status')} = '{TaskStatus.PENDING.value}' "
                f"AND {s.col('run_at')} <= {p} AND {mine} ORDER BY {s.col('run_at')} LIMIT {p}")

    def claimable_rows(self, types: Collection[str], limit: int) -> list[dict[str, Any]]:
        """The rows (as :meth:`~taskmgr.store.Tx.row` reads them) of unowned NEW or RESTORING tasks
        of one of ``types``, ascending by id, at most ``limit``."""
        types = list(types)
        if not types:
            return []
        params = (TaskStatus.NEW.value, TaskStatus.RESTORING.value, *types, limit)
        names = self._sql.row_names
        return [dict(zip(names, row)) for row in self.read(self._claimable_sql(len(types)), params)]

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _claimable_sql(self, n_types: int) -> str:
        s, p = self._sql, self._sql.db.param
        return (f"{s.select_rows} WHERE {s.col('status')} IN ({p}, {p}) AND {s.col('owner')} IS NULL "
                f"AND {s.col('type')} IN ({', '.join([p] * n_types)}) ORDER BY {s.col('id')} LIMIT {p}")

    def cancelling_ids(self, ids: Iterable[int]) -> set[int]:
        """Which of these tasks are CANCELLING."""
        found: set[int] = set()
        for part in self._parts(ids):
            sql = self.list_sql(True, False, False, len(part), False, False, "id")
            found.update(r[0] for r in self.read(sql, (TaskStatus.CANCELLING.value, *part)))
        return found
