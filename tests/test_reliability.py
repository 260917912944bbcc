"""Faults: a database that fills up, and many actors racing on the same tasks."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import pytest
from peewee import SqliteDatabase

from conftest import WAIT, Gates, register_test_types
from taskmgr import (
    InvalidTransition,
    StoreError,
    TaskManager,
    TaskNotFound,
    TaskStatus,
)
from taskmgr.testing import check_history

S = TaskStatus
HERE = os.path.dirname(os.path.abspath(__file__))


def _set_page_limit(mgr: TaskManager, pages: int) -> None:
    """SQLite's max_page_count is per connection: set it on the connection that writes."""
    mgr._store.write(lambda tx: tx.store.db.execute_sql(f"PRAGMA max_page_count = {pages}"))


def test_a_full_database_refuses_new_work_keeps_outcomes_and_recovers(tmp_path, gates: Gates) -> None:
    db = SqliteDatabase(str(tmp_path / "small.db"), pragmas={"journal_mode": "wal"}, timeout=5)
    mgr = TaskManager(db, poll_interval=0.05)
    register_test_types(mgr, gates)

    def big(ctx) -> str:
        gates.started[ctx.task_id].set()
        assert gates.release.wait(WAIT)
        return "r" * 50_000  # needs new pages: cannot be written while the database is full

    mgr.register("big", big)
    mgr.start()
    try:
        running = mgr.submit("big")
        gates.wait_started(running)
        size = mgr._store.db.execute_sql("PRAGMA page_count").fetchone()[0]
        _set_page_limit(mgr, size + 8)
        acknowledged = []
        with pytest.raises(StoreError, match=r"^the task database is full \(.*\): nothing was written"):
            for i in range(200):  # bounded: eight pages are gone within a few submissions
                acknowledged.append(mgr.submit("echo", "x" * 4000, delay=3600))
        stored = mgr.list(limit=-1)  # reads go on
        assert sorted(t.id for t in stored) == sorted([running, *acknowledged])
        # the running task ends while nothing can be written: its outcome waits in memory
        gates.release.set()
        with pytest.raises(Exception, match="still RUNNING"):
            mgr.wait(running, 0.5)
        # space returns: the outcome is written by the next poll, and new work is accepted, no restart
        _set_page_limit(mgr, 1_000_000)
        task = mgr.wait(running, WAIT)
        assert task.status is S.SUCCESS and len(task.result) == 50_002
        later = mgr.submit("echo", "after")
        assert mgr.wait(later, WAIT).status is S.SUCCESS
        check_history(mgr.history())
    finally:
        gates.release.set()
        mgr.shutdown()


def test_a_queued_task_whose_start_cannot_be_written_starts_at_a_later_poll(db_path: str, gates: Gates,
                                                                              monkeypatch) -> None:
    """Fault injection: the first write of QUEUED -> RUNNING fails as a full disk would."""
    import peewee

    from taskmgr import manager as manager_module

    real_start = manager_module._op_start
    failures = []

    def failing_once(tx, task_id):
        if not failures:
            failures.append(task_id)
            raise peewee.OperationalError("database or disk is full")
        return real_start(tx, task_id)

    monkeypatch.setattr(manager_module, "_op_start", failing_once)
    mgr = TaskManager(db_path, poll_interval=0.05)
    register_test_types(mgr, gates)
    with mgr:
        tid = mgr.submit("echo", "eventually")
        assert mgr.wait(tid, WAIT).status is S.SUCCESS
        assert failures == [tid]
        assert [m.to_status for m in mgr.history(tid)] == [S.NEW, S.QUEUED, S.RUNNING, S.SUCCESS]
