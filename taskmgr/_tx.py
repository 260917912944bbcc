"""The transaction verbs: what an operation may do to the database, and the compare-and-set.

Owns :class:`Tx`, the handle an operation ``op(tx, *args)`` gets from the
commit engine: the only way it touches the database. Every status change is
a compare-and-set (``UPDATE ... WHERE id = :id AND status = :from``, and with
``held_by`` ``AND owner = :node`` or ``owner IS NULL`` for :data:`NOBODY`)
that reports whether a row changed and refuses outright a move the
transition table does not allow; it appends the change to the row's history
in the same statement.

Invariants: a Tx lives for one attempt of one batch, on the leader's thread
and connection, inside its open transaction; ``now`` (epoch ms) is taken once
the write lock is held and dates every change of the batch; ``changes``
lists the ``(task_id, from, to)`` of every move, for the commit's listeners.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import Any

from ._history import creation_steps, entry_head
from ._models import TEXT
from ._sql import Statements
from .errors import InvalidTransition, TaskNotFound
from .status import TaskStatus, can_move

__all__ = ["Tx", "NOBODY", "held"]


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
    """The owner condition of an UPDATE for ``held_by`` (see :meth:`Statements.update`): its mode,
    and the parameter it takes (none, or the node)."""
    if held_by is None:
        return "", ()
    if held_by is NOBODY:
        return "null", ()
    return "eq", (held_by,)


OPEN, COMMITTING, ROLLED_BACK = range(3)  # a Tx's state


def in_transaction(cursor: Any) -> bool:
    """Whether a DB-API cursor's connection is inside a transaction (True when it cannot tell)."""
    conn = cursor.connection
    state = getattr(conn, "in_transaction", None)  # sqlite3
    if isinstance(state, bool):
        return state
    try:
        return int(conn.info.transaction_status) != 0  # psycopg2 and psycopg 3: 0 is IDLE
    except Exception:  # noqa: BLE001 - a driver that does not say: as if still in one
        return True


@functools.lru_cache(maxsize=64)
def _insert_plan(keys: tuple[str, ...], path: tuple[TaskStatus, ...], history: bool) -> tuple[
    tuple[str, ...], tuple[tuple[TaskStatus | None, TaskStatus], ...], tuple[str, ...], str, int
]:
    """What :meth:`Tx.insert_many` needs for rows with ``keys`` created along ``path``, worked out
    once per shape: the columns written, the history steps and their entries up to the time (none
    without history), the stored status, and rows per statement (SQLite caps bound parameters per
    statement; this stays well under it)."""
    steps = creation_steps(path)
    if history:
        cols = keys + ("status", "created", "updated", "history")
        heads = tuple(entry_head(frm, to) for frm, to in steps)
    else:
        cols, heads = keys + ("status", "created", "updated"), ()
    return cols, steps, heads, TEXT[path[-1]], max(1, 30000 // len(cols))


def _in_scope(row: dict[str, Any], graphspace: str | None, graph: str | None) -> bool:
    return (graphspace is None or row["graphspace"] == graphspace) and (graph is None or row["graph"] == graph)


class Tx:
    """The handle an operation gets: the only way it touches the database.

    All methods run inside the leader's open transaction, on one DB-API
    cursor of the leader's connection: a statement costs the driver's call,
    not peewee's per-statement wrapping (the leader converts the driver's
    errors into peewee's once per batch). ``now`` is the batch's timestamp
    (epoch ms), shared by every change in it.
    """

    __slots__ = ("sql", "now", "changes", "writes", "state", "_cursor")

    def __init__(self, sql: Statements, cursor: Any) -> None:
        #: the store's statements (its table, columns and dialect)
        self.sql = sql
        self.now = 0  # set by the leader once it holds the write lock
        self.state = OPEN  # COMMITTING once its COMMIT is issued, ROLLED_BACK once given up
        self._cursor = cursor
        #: ``(task_id, from, to)`` of every move made so far in this transaction
        self.changes: list[tuple[int, TaskStatus | str | None, TaskStatus]] = []
        #: statements that may have written (any statement run through :meth:`execute` counts)
        self.writes = 0

    def committed(self) -> bool:
        """Whether the transaction's COMMIT went through: it was issued, and the connection is in
        no transaction now (nor was it rolled back). For the store's leader, which an interrupt
        may reach just as the COMMIT returns."""
        return self.state == COMMITTING and not in_transaction(self._cursor)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement in the transaction and return the cursor."""
        self.writes += 1
        self._cursor.execute(sql, params)
        return self._cursor

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read statement in the transaction (not counted as a write)."""
        return self._exec(sql, params).fetchall()  # type: ignore[no-any-return]

    def control(self, statement: str) -> None:
        """Run a statement that drives the transaction itself (``BEGIN``, ``SAVEPOINT``,
        ``COMMIT`` ...): the commit engine's, not an operation's; not counted as a write."""
        self._exec(statement)

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
        sql = self.sql.row_by_id
        if lock and not self.sql.is_sqlite:
            sql += " FOR UPDATE SKIP LOCKED"
        found = self._exec(sql, (task_id,)).fetchone()
        return None if found is None else dict(zip(self.sql.row_names, found))

    def rows(self, task_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The stored rows of ``task_ids`` that exist, by id, read by one statement per 500 ids
        (as :meth:`row` reads one)."""
        s, found = self.sql, {}
        for i in range(0, len(task_ids), 500):
            chunk = task_ids[i : i + 500]
            marks = ", ".join([s.db.param] * len(chunk))
            for values in self._exec(f"{s.rows_by_id} IN ({marks})", tuple(chunk)).fetchall():
                row = dict(zip(s.row_names, values))
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
            creation_steps(tuple(path))  # still refuses a bad path
            return []
        s = self.sql
        cols, steps, heads, status, per_statement = _insert_plan(tuple(rows[0]), tuple(path), s.history)
        now = self.now
        extra: tuple[Any, ...] = (status, now, now)
        if heads:
            tail = f"{now}]\n"
            extra += (tail.join(heads) + tail,)
        ids: list[int]
        if len(rows) == 1 and not s.returning:  # a submit: one statement, one tuple, no loop
            self.writes += 1
            ids = [int(self._exec(s.insert(cols), (*rows[0].values(), *extra)).lastrowid)]
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
                    cursor = self._exec(s.insert(cols, len(chunk), True), params)
                    ids += [int(r[0]) for r in cursor.fetchall()]
                else:  # SQLite: one statement under the write lock gets consecutive AUTOINCREMENT ids
                    last = int(self._exec(s.insert(cols, len(chunk), False), params).lastrowid)
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
        s = self.sql
        if not s.update_returning:
            return self.row(task_id) if self.move(task_id, frm, to, held_by=held_by, **fields) else None
        if not can_move(frm, to):
            raise InvalidTransition(task_id, frm, to)
        found = self._cas(task_id, frm, to, fields, s.returning_row, held_by=held_by)
        return None if found is None else dict(zip(s.row_names, found))

    def move_from_stored(self, task_id: int, stored: Any, to: TaskStatus, **fields: Any) -> bool:
        """Move a row whose stored status is not one of the twelve (a damaged record) to ``to``.

        Only UNKNOWN is a legal target: a damaged record is first declared
        UNKNOWN, and from there follows the table.
        """
        if to is not TaskStatus.UNKNOWN:
            raise InvalidTransition(task_id, stored, to)
        return self._cas(task_id, stored, to, fields, "") is not None

    def _cas(self, task_id: int, frm: Any, to: TaskStatus, fields: dict[str, Any], returning: str,
             steps: list[tuple[TaskStatus, TaskStatus]] | None = None, held_by: str | None = None) -> Any:
        """The compare-and-set statement of the moves (already checked against the table): the
        returned row (``returning``) or True when it moved, None when it did not. ``steps``: the
        transitions recorded for a move along a path (see :meth:`move_path`); ``held_by``: the
        owner the row must still have."""
        fields["status"] = TEXT[to]
        fields["updated"] = self.now
        if self.sql.history:
            if steps is None:
                fields["history"] = f"{entry_head(frm, to)}{self.now}]\n"
            else:
                fields["history"] = "".join(f"{entry_head(a, b)}{self.now}]\n" for a, b in steps)
        mode, owner = _owner_condition(held_by)
        sql = self.sql.update(tuple(fields), True, 1, mode)
        params = (*fields.values(), task_id, TEXT.get(frm, frm), *owner)
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
        sql = self.sql.update(tuple(fields), False, len(statuses), mode)
        if self._exec(sql, (*fields.values(), task_id, *(st.value for st in statuses), *owner)).rowcount != 1:
            return False
        self.writes += 1
        return True

    def owned_ids(self, node: str, status: TaskStatus) -> list[int]:
        """Ids of the tasks ``node`` owns in ``status``, ascending, read in this transaction."""
        s, p = self.sql, self.sql.db.param
        sql = (f"SELECT {s.col('id')} FROM {s.table} WHERE {s.col('status')} = {p} AND {s.col('owner')} = {p} "
               f"ORDER BY {s.col('id')}")
        return [r[0] for r in self.read(sql, (status.value, node))]

    def disown_pending(self, node: str) -> int:
        """Leave the PENDING tasks that ``node`` owns to any node (their owner becomes NULL);
        returns how many. Their status, time and history do not change."""
        s = self.sql
        sql = (f"UPDATE {s.table} SET {s.col('owner')} = NULL "
               f"WHERE {s.col('owner')} = {s.db.param} AND {s.col('status')} = {s.db.param}")
        n = self._exec(sql, (node, TaskStatus.PENDING.value)).rowcount
        self.writes += 1
        return int(n)

    def nodes(self) -> set[str]:
        """The names of the registered nodes, read in this transaction."""
        return {name for (name,) in self._exec(self.sql.node_names).fetchall()}

    def delete(self, task_id: int) -> bool:
        """Delete a task's row and its history. Returns False when there was no row."""
        s = self.sql
        n = self._exec(f"DELETE FROM {s.table} WHERE {s.col('id')} = {s.db.param}", (task_id,)).rowcount
        self.writes += 1
        return bool(n)
