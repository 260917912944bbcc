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
  versions; so is one whose tables of our names are not ours ("not a taskmgr
  database"), checked before anything is made or changed.

Entered only by the thread opening a store.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.parse
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


#: the columns every table of ours has had since version 1 (version 1 brought the task row's history)
_OURS: dict[str, tuple[str, ...]] = {
    "taskmgr_task": ("id", "graphspace", "graph", "type", "name", "status", "progress", "created", "updated",
                     "result", "retries", "callable", "input", "owner", "run_at", "ran", "restores", "max_retries",
                     "retry_delay"),
    "taskmgr_node": ("node", "host", "pid", "started", "heartbeat"),
    "taskmgr_history": ("task_id", "from_status", "to_status", "at"),
    VERSION_TABLE: ("name", "applied"),
}


def check_ours(db: Database, where: str) -> set[str]:
    """The tables of the database, once it is known that those bearing our names are ours.

    :raises StoreError: "... is not a taskmgr database: ..." naming what differs (a table that
        lacks our columns, a view by one of our names, our other tables without a task table).
    """
    tables = set(db.get_tables())
    views = {v.name for v in db.get_views()}
    problems = []
    for name, needed in _OURS.items():
        if name in views:
            problems.append(f"{name} is a view, not a table")
        elif name in tables:
            have = {c.name for c in db.get_columns(name)}
            missing = [c for c in needed if c not in have]
            if missing:
                problems.append(f"table {name} lacks the columns {', '.join(missing)}")
    others = sorted(tables & {"taskmgr_node", VERSION_TABLE})
    if not problems and others and "taskmgr_task" not in tables:
        problems.append(f"it has {' and '.join(others)} but no taskmgr_task table")
    if problems:
        raise StoreError(f"{where} is not a taskmgr database: {'; '.join(problems)} (another application's "
                         "tables by taskmgr's names?); nothing was changed")
    return tables


def _unreadable(exc: BaseException, where: str) -> StoreError:
    if "not a database" in str(exc):
        return StoreError(f"{where} is not a taskmgr database: {exc}")
    return StoreError(f"cannot open the task store at {where}: {exc}")


def probe_file(path: str, where: str, busy_timeout: float = 5.0) -> bool:
    """Check an existing SQLite file before the store opens it (and its pragmas switch it to WAL):
    on a connection that changes nothing. Returns whether the file holds anything.

    :raises StoreError: when it is not a SQLite database, or not a taskmgr one.
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return False
    probe = peewee.SqliteDatabase(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=rw", uri=True,
                                  timeout=busy_timeout)
    try:
        check_ours(probe, where)
        return True
    except peewee.DatabaseError as exc:
        raise _unreadable(exc, where) from exc
    finally:
        probe.close()


def check_readable(db: Database, task: Any, where: str) -> int:
    """The version of a database opened read-only, which must be the code's: nothing is made,
    changed or migrated.

    :raises StoreError: when it is not a taskmgr database, is still to migrate, or is newer.
    """
    try:
        tables = check_ours(db, where)
        if VERSION_TABLE in tables:
            version = database_version(Runner(db, MIGRATIONS, table_name=VERSION_TABLE), where)
        elif task._meta.table_name in tables:
            version = 1
        else:
            raise StoreError(f"{where} is not a taskmgr database: it has no {task._meta.table_name} table")
    except peewee.DatabaseError as exc:
        raise _unreadable(exc, where) from exc
    if version < code_version():
        raise StoreError(f"the task database {where} has schema version {version}, older than this taskmgr's "
                         f"{code_version()}: run a writable open to migrate it (any TaskManager or Store "
                         "without readonly=True), then read it")
    return version


def _index(name: str) -> int:
    found = re.match(r"\d+", name)
    return int(found.group()) if found else -1


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

    :raises StoreError: when it is newer than the code, or its migrations are not ours.
    """
    ours = {m.name for m in runner.migrations()}
    applied = list(runner.applied())
    code = code_version()
    foreign = sorted(n for n in applied if n not in ours and _index(n) <= code)
    if foreign:
        raise StoreError(f"{where} is not a taskmgr database: {VERSION_TABLE} records migrations that are not "
                         f"taskmgr's: {', '.join(foreign)}; nothing was changed")
    version = max((_index(n) for n in applied), default=1)
    unknown = sorted(n for n in applied if n not in ours)
    if unknown:
        raise StoreError(
            f"the task database {where} has schema version {version}, newer than this taskmgr's {code} (it "
            f"knows no migration {', '.join(unknown)}): upgrade taskmgr to the version that made it, or open a "
            "database made by this version; nothing was changed"
        )
    return version


def open_schema(db: Database, task: Any, node: Any, where: str) -> int:
    """Make the schema, or migrate it to the code's version; returns that version.

    :raises StoreError: when the database is newer than the code, or refuses.
    """
    runner = Runner(db, MIGRATIONS, table_name=VERSION_TABLE)
    try:
        with _write_lock(db):
            tables = check_ours(db, where)
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
