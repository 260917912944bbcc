"""Version 2: a node's own lease and identity; the old history table merged into the task rows.

``taskmgr_node`` gets ``lease_ms`` (the node's lease, judged by the
database's clock) and ``identity`` (its PID namespace and boot: the pid
shortcut applies only within one). Rows of nodes registered by version 1
keep them null: the reaper judges those by its own timeout.

``taskmgr_history`` (written by versions before the history moved into the
task row, read by version 1) is merged into each task's ``history`` column,
its rows placed among the row's entries by time, a row of the table first on
a tie (as version 1 read them), and then dropped. Rows of tasks that no
longer exist go with it.
"""

import heapq
import json
import logging

from peewee import BigIntegerField, TextField

log = logging.getLogger("taskmgr.store")

_TASKS_PER_STEP = 500


def up(migrator, db):
    columns = {c.name for c in db.get_columns("taskmgr_node")}
    if "lease_ms" not in columns:
        migrator.migrate(migrator.add_column("taskmgr_node", "lease_ms", BigIntegerField(null=True)))
    if "identity" not in columns:
        migrator.migrate(migrator.add_column("taskmgr_node", "identity", TextField(null=True)))
    if "taskmgr_history" in db.get_tables():
        merged, dropped = _merge_history(db)
        migrator.migrate(migrator.drop_table("taskmgr_history"))
        log.info("schema 2: %d task histories merged from taskmgr_history (%d rows of deleted tasks dropped)",
                 merged, dropped)


def _merge_history(db):
    q = db.quote[0] + "%s" + db.quote[1]
    p = db.param
    merged = dropped = 0
    after = None
    while True:
        where, params = ("", ()) if after is None else (f"WHERE {q % 'task_id'} > {p} ", (after,))
        ids = [r[0] for r in db.execute_sql(
            f"SELECT DISTINCT {q % 'task_id'} FROM {q % 'taskmgr_history'} {where}"
            f"ORDER BY {q % 'task_id'} LIMIT {_TASKS_PER_STEP}", params)]
        if not ids:
            return merged, dropped
        after = ids[-1]
        marks = ", ".join([p] * len(ids))
        legacy = {}
        for tid, frm, to, at in db.execute_sql(
                f"SELECT {q % 'task_id'}, {q % 'from_status'}, {q % 'to_status'}, {q % 'at'} FROM "
                f"{q % 'taskmgr_history'} WHERE {q % 'task_id'} IN ({marks}) ORDER BY {q % 'id'}", ids):
            legacy.setdefault(tid, []).append((at, json.dumps([frm, to, at], separators=(",", ":")) + "\n"))
        rows = dict(db.execute_sql(f"SELECT {q % 'id'}, {q % 'history'} FROM {q % 'taskmgr_task'} "
                                   f"WHERE {q % 'id'} IN ({marks})", ids).fetchall())
        for tid, old in legacy.items():
            if tid not in rows:
                dropped += len(old)
                continue
            lines = [(_at(line), line + "\n") for line in (rows[tid] or "").split("\n")[:-1]]
            # as version 1 read them: the table's rows among the row's entries by time, the table's first
            # on a tie; an unreadable entry keeps its place after the one before it
            text = "".join(line for _at_, line in heapq.merge(old, lines, key=lambda entry: entry[0]))
            db.execute_sql(f"UPDATE {q % 'taskmgr_task'} SET {q % 'history'} = {p} WHERE {q % 'id'} = {p}",
                           (text, tid))
            merged += 1


def _at(line):
    """An entry's time; an unreadable one sorts before anything (it never moves a readable one)."""
    try:
        at = json.loads(line)[2]
    except (ValueError, TypeError, IndexError, KeyError):
        return float("-inf")
    return at if isinstance(at, int) and not isinstance(at, bool) else float("-inf")
