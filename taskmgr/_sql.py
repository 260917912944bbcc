"""The SQL text of one store's statements, built once per shape, and reads by the driver alone.

Owns the statements every other room of the store runs on the task table:
one row, many rows, a Task, the compare-and-set UPDATE and the INSERT, each
quoted for its database and cached by shape. Statements are run on DB-API
cursors directly: peewee's per-statement wrapping (logging, hooks, row
conversion) cost more than the statements themselves, and every column is a
plain integer, float or text, with nothing to convert.

Invariants: immutable once built (the caches only grow), so any thread may
use it; a statement's parameters always come in the order its docstring says.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from typing import Any

import peewee
from peewee import Database, SqliteDatabase

from ._models import TASK_FIELDS

#: peewee's converter of driver errors into its own classes (what Database.execute_sql wraps each call in)
wrap_db_errors = getattr(peewee, "__exception_wrapper__")  # noqa: B009 - a module-private name


def driver_read(db: Database, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The rows of one read on this thread's connection to ``db``, by the driver alone."""
    with wrap_db_errors:
        cursor = db.cursor()
        cursor.execute(sql, params)  # (psycopg2's execute returns None, not the cursor)
        return cursor.fetchall()


def quote(db: Database, name: str) -> str:
    """``name`` quoted as an identifier of ``db``."""
    q = db.quote  # peewee keeps the opening and closing quote characters, e.g. '""'
    return q[0] + name.replace(q[1], q[1] * 2) + q[1]


class Statements:
    """The statements of one database's task table.

    A row read as a dict (an operation's, a listing's) leaves the ``history``
    column out: nothing there needs it, and it grows with every change.
    """

    def __init__(self, db: Database, task_model: Any, node_model: Any, history: bool) -> None:
        self.db = db
        self.table = quote(db, task_model._meta.table_name)
        #: the names of the registered nodes
        self.node_names = (f"SELECT {quote(db, node_model._meta.fields['node'].column_name)} "
                           f"FROM {quote(db, node_model._meta.table_name)}")
        self._columns = {f.name: quote(db, f.column_name) for f in task_model._meta.sorted_fields}
        #: record every status change in the row (the store's ``history`` option)
        self.history = history
        self.is_sqlite = isinstance(db, SqliteDatabase)
        #: INSERT ... RETURNING for a batch (PostgreSQL; SQLite inserts a batch with consecutive ids)
        self.returning = bool(getattr(db, "returning_clause", False)) and not self.is_sqlite
        #: UPDATE ... RETURNING: PostgreSQL, and SQLite from 3.35
        self.update_returning = not self.is_sqlite or sqlite3.sqlite_version_info >= (3, 35)
        names = [f.name for f in task_model._meta.sorted_fields if f.name != "history"]
        #: the keys of a row dict, in the order the row statements read them
        self.row_names = names
        cols = ", ".join(self._columns[n] for n in names)
        #: every row column, read from the table (completed by a WHERE)
        self.select_rows = f"SELECT {cols} FROM {self.table}"
        #: rows by id (completed by `` IN (...)``), and one row by id
        self.rows_by_id = f"{self.select_rows} WHERE {self.col('id')}"
        self.row_by_id = f"{self.rows_by_id} = {db.param}"
        #: appended to the compare-and-set to return the moved row
        self.returning_row = f" RETURNING {cols}"
        #: a Task's columns by id, in :data:`TASK_FIELDS` order
        self.task_by_id = (f"SELECT {', '.join(self.col(n) for n in TASK_FIELDS)} FROM {self.table} "
                           f"WHERE {self.col('id')} = {db.param}")

    def col(self, name: str) -> str:
        """The quoted column of the task model's field ``name``."""
        return self._columns[name]

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one Statements lives as long as its store
    def update(self, cols: tuple[str, ...], by_status: bool, n_status: int = 1, by_owner: str = "") -> str:
        """The UPDATE of ``cols`` by id and status (one, or ``n_status`` of them), and by the owner:
        ``by_owner`` is ``""`` (any), ``"eq"`` (a parameter) or ``"null"`` (none). ``history`` is
        appended to, not set."""
        p = self.db.param
        sets = ", ".join(f"{self.col(c)} = {p}" if c != "history" else
                         f"{self.col(c)} = COALESCE({self.col(c)}, '') || {p}" for c in cols)
        where = f"{self.col('id')} = {p} AND {self.col('status')} "
        where += f"= {p}" if by_status else f"IN ({', '.join([p] * n_status)})"
        if by_owner:
            where += f" AND {self.col('owner')} " + (f"= {p}" if by_owner == "eq" else "IS NULL")
        return f"UPDATE {self.table} SET {sets} WHERE {where}"

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def insert(self, cols: tuple[str, ...], rows: int = 1, returning: bool = False) -> str:
        """The INSERT of ``rows`` rows of ``cols`` (returning their ids, with ``returning``)."""
        p = self.db.param
        values = "(" + ", ".join([p] * len(cols)) + ")"
        sql = f"INSERT INTO {self.table} ({', '.join(self.col(c) for c in cols)}) VALUES " + ", ".join([values] * rows)
        if returning:
            sql += f" RETURNING {self.col('id')}"
        return sql
