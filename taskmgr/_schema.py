"""The schema: the store's tables and indexes, made or brought up to date when a store opens.

Owns the DDL. Runs in one transaction, on PostgreSQL under an advisory lock
(two nodes opening a database of an earlier version at once would otherwise
each take a share lock on the task table for its new index, then wait for
the other's to drop the old ones: a deadlock). Entered only by the thread
opening a store.
"""

from __future__ import annotations

from typing import Any

import peewee
from peewee import Database

from ._models import OLD_INDEXES, PENDING_INDEX
from ._sql import quote
from .errors import StoreError
from .status import TaskStatus

#: the PostgreSQL advisory lock held while a store makes or updates its schema
SCHEMA_LOCK = 0x7461736B6D6772  # "taskmgr"


def ensure_schema(db: Database, task: Any, legacy_history: Any, node: Any) -> None:
    """Create what is missing of the tables and indexes, drop the indexes of earlier versions, and
    add the columns earlier versions lacked.

    :raises StoreError: when the database refuses.
    """
    try:
        with db.atomic():
            if isinstance(db, peewee.PostgresqlDatabase):  # one node at a time makes the schema
                db.execute_sql(f"SELECT pg_advisory_xact_lock({db.param})", (SCHEMA_LOCK,))
            db.create_tables([task, legacy_history, node], safe=True)
            table = quote(db, task._meta.table_name)
            col = lambda name: quote(db, task._meta.fields[name].column_name)  # noqa: E731
            db.execute_sql(
                f"CREATE INDEX IF NOT EXISTS {quote(db, PENDING_INDEX)} ON {table} ({col('run_at')}) "
                f"WHERE {col('status')} = '{TaskStatus.PENDING.value}'"
            )
            for old in OLD_INDEXES:
                db.execute_sql(f"DROP INDEX IF EXISTS {quote(db, old)}")
            if "history" not in {c.name for c in db.get_columns(task._meta.table_name)}:
                db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {col('history')} TEXT")
            node_columns = {c.name for c in db.get_columns(node._meta.table_name)}
            for name, kind in (("lease_ms", "BIGINT"), ("identity", "TEXT")):
                if name not in node_columns:
                    db.execute_sql(f"ALTER TABLE {quote(db, node._meta.table_name)} ADD COLUMN {quote(db, name)} {kind}")
    except peewee.DatabaseError as exc:
        raise StoreError(f"cannot open the task store at {db.database!r}: {exc}") from exc
