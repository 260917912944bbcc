"""The schema's version: made at the latest, or migrated to it, when a store opens.

Owns the DDL and the version kept in the database: ``taskmgr_schema``, the
table of peewee's ``playhouse.migrations.Runner``, one row per migration
applied (``taskmgr/_migrations/NNNN_*.py``); the version is the highest NNNN.

Invariants:

- everything happens in one transaction under the write lock (SQLite
  ``BEGIN IMMEDIATE``, PostgreSQL an advisory lock): of two processes opening
  a database at once, the second sees what the first did, and waits for it;
- a database without ``taskmgr_schema`` but with ``taskmgr_task`` is version 1
  (the schema before versions), migrated from there; a new database is made at
  the latest version from the current models, every migration recorded as
  applied;
- a database newer than the code (a migration this code does not know) is
  refused, untouched, with a :class:`~taskmgr.errors.StoreError` naming both
  versions.

Entered only by the thread opening a store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import peewee
from peewee import Database
from playhouse.migrations import Migration, Runner

from ._models import PENDING_INDEX
from ._sql import quote
from .errors import StoreError
from .status import TaskStatus

#: the directory of the numbered migrations
MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_migrations")
#: the table that records the migrations applied
VERSION_TABLE = "taskmgr_schema"
#: the PostgreSQL advisory lock held while a store makes or migrates its schema
SCHEMA_LOCK = 0x7461736B6D6772  # "taskmgr"


def code_version() -> int:
    """The schema version this code writes: its highest migration."""
    return max(m.idx for m in Migration.load_directory(MIGRATIONS))


@contextlib.contextmanager
def _write_lock(db: Database) -> Iterator[None]:
    """A transaction holding the database's write lock (for the schema) until it ends."""
    if isinstance(db, peewee.SqliteDatabase):
        with db.atomic("IMMEDIATE"):
            yield
        return
    with db.atomic():
        if isinstance(db, peewee.PostgresqlDatabase):  # one node at a time makes the schema
            db.execute_sql(f"SELECT pg_advisory_xact_lock({db.param})", (SCHEMA_LOCK,))
        yield


def database_version(runner: Runner, where: str) -> int:
    """The version recorded in a versioned database.

    :raises StoreError: when it is newer than the code.
    """
    status = runner.status()
    applied = [m for m in status if m.applied is not None]
    version = max((m.idx for m in applied), default=1)
    unknown = [m.name for m in status if m.path is None]
    if unknown:
        raise StoreError(
            f"the task database {where} has schema version {version}, newer than this taskmgr's "
            f"{code_version()} (it knows no migration {', '.join(unknown)}): upgrade taskmgr to the version "
            "that made it, or open a database made by this version"
        )
    return version


def open_schema(db: Database, task: Any, node: Any, where: str) -> int:
    """Make the schema, or migrate it to the code's version; returns that version.

    :raises StoreError: when the database is newer than the code, or refuses.
    """
    runner = Runner(db, MIGRATIONS, table_name=VERSION_TABLE)
    try:
        with _write_lock(db):
            tables = set(db.get_tables())
            if VERSION_TABLE in tables:
                if database_version(runner, where) < code_version():
                    runner.up()
            elif task._meta.table_name in tables:  # version 1: the schema before versions
                runner.up()
            else:
                _create_latest(db, task, node, runner)
    except peewee.DatabaseError as exc:
        raise StoreError(f"cannot open the task store at {where}: {exc}") from exc
    return code_version()


def _create_latest(db: Database, task: Any, node: Any, runner: Runner) -> None:
    """A new database: the current models' tables and indexes, every migration recorded."""
    db.create_tables([task, node], safe=True)
    col = lambda name: quote(db, task._meta.fields[name].column_name)  # noqa: E731
    db.execute_sql(f"CREATE INDEX IF NOT EXISTS {quote(db, PENDING_INDEX)} ON {quote(db, task._meta.table_name)} "
                   f"({col('run_at')}) WHERE {col('status')} = '{TaskStatus.PENDING.value}'")
    runner.History.create_table()
    for migration in runner.migrations():
        runner.History.create(name=migration.name)
