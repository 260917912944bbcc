"""Faults: a database that fills up, and many actors racing on the same tasks."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest
from peewee import SqliteDatabase

from conftest import WAIT, Gates, register_test_types
from taskmgr import (
    StoreError,
    TaskManager,
    TaskStatus,
    WaitTimeout,
)
from taskmgr.testing import check_history

S = TaskStatus
HERE = os.path.dirname(os.path.abspath(__file__))


class SizeLimitedDatabase(SqliteDatabase):
    """A disk that fills up on request: SQLite's max_page_count is a setting of each connection,
    and whichever thread leads a commit writes on its own, so every cursor handed out first
    brings its connection's limit up to date."""

    max_pages = 1_000_000_000

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits: dict[int, tuple[object, int]] = {}  # id(connection) -> (connection, its limit)

    def cursor(self, *args, **kwargs):
        conn = self.connection()
        if self.limits.get(id(conn), (None, None))[1] != self.max_pages:
            conn.execute(f"PRAGMA max_page_count = {self.max_pages}")
            self.limits[id(conn)] = (conn, self.max_pages)  # held: an id is not reused while it lives
        return super().cursor(*args, **kwargs)


def _set_page_limit(db: SizeLimitedDatabase, pages: int) -> None:
    db.max_pages = pages


def test_a_full_database_refuses_new_work_keeps_outcomes_and_recovers(tmp_path, gates: Gates) -> None:
    db = SizeLimitedDatabase(str(tmp_path / "small.db"), pragmas={"journal_mode": "wal"}, timeout=5)
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
        size = db.execute_sql("PRAGMA page_count").fetchone()[0]
        _set_page_limit(db, size + 8)
        acknowledged = []
        with pytest.raises(StoreError, match=r"^the task database is full \(.*\): nothing was written"):
            for _ in range(200):  # bounded: eight pages are gone within a few submissions
                acknowledged.append(mgr.submit("echo", "x" * 4000, delay=3600))
        stored = mgr.list(limit=-1)  # reads go on
        assert sorted(t.id for t in stored) == sorted([running, *acknowledged])
        # the running task ends while nothing can be written: its outcome waits in memory
        gates.release.set()
        with pytest.raises(Exception, match="still RUNNING"):
            mgr.wait(running, 0.5)
        # space returns: the outcome is written by the next poll, and new work is accepted, no restart
        _set_page_limit(db, 1_000_000)
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
    """Fault injection: the first write of QUEUED -> RUNNING fails as a full disk would.

    The only worker is held by a gate task, so the echo task waits QUEUED (a task
    submitted while a worker is free is written RUNNING by its submit instead)."""
    import peewee

    from taskmgr import _moves as moves

    real_start = moves.start
    failures = []

    def failing_once(tx, node, task_id):
        if not failures:
            failures.append(task_id)
            raise peewee.OperationalError("database or disk is full")
        return real_start(tx, node, task_id)

    monkeypatch.setattr(moves, "start", failing_once)  # a worker's QUEUED -> RUNNING
    mgr = TaskManager(db_path, workers=1, poll_interval=0.05)
    mgr.START_TRIES = 0  # the worker's own start, not a later commit's (tests/test_start_later.py)
    register_test_types(mgr, gates)
    with mgr:
        blocker = mgr.submit("gate")
        gates.wait_started(blocker)
        tid = mgr.submit("echo", "eventually")
        assert mgr.get(tid).status is S.QUEUED
        gates.release.set()
        assert mgr.wait(tid, WAIT).status is S.SUCCESS
        assert failures == [tid]
        assert [m.to_status for m in mgr.history(tid)] == [S.NEW, S.QUEUED, S.RUNNING, S.SUCCESS]


SOAK = float(os.environ.get("TASKMGR_SOAK_SECONDS", "0"))


@pytest.mark.slow
def test_concurrent_actors_in_several_processes_never_break_the_table_or_lose_a_task(db_path: str) -> None:
    """Three processes of three threads each race on the same tasks; then every invariant is checked."""
    import json

    TaskManager(db_path).shutdown()  # create the file before the actors race to
    seconds = SOAK or 3.0
    started = time.monotonic()
    actors = [
        subprocess.Popen([sys.executable, os.path.join(HERE, "childjobs.py"), "actor", db_path, str(seconds), str(i)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE)
        for i in range(3)
    ]
    reports = []
    for a in actors:
        out, err = a.communicate(timeout=seconds + 60)
        assert a.returncode == 0, err  # a hang ends the actor after 30 s with every thread's stack in err
        reports.append(json.loads(out))
    elapsed = time.monotonic() - started
    unexpected = [e for r in reports for e in r["unexpected"]]
    assert unexpected == []
    acked = {i for r in reports for i in r["acked"]}
    deleted = {i for r in reports for i in r["deleted"]}
    ops = sum(r["ops"] for r in reports)
    print(f"\n{ops} operations by 3 processes x 3 threads in {elapsed:.1f} s ({ops / elapsed:.0f}/s), "
          f"{len(acked)} tasks submitted, {len(deleted)} deleted")
    mgr = TaskManager(db_path)
    try:
        stored = {t.id for t in mgr.list(limit=-1)}
        assert acked - deleted <= stored, "an acknowledged task was lost"
        assert not (stored & deleted), "a deleted record came back"
        last = check_history(mgr.history())
        assert set(last) == stored
        for task in mgr.list(limit=-1):
            assert last[task.id] is task.status
    finally:
        mgr.shutdown()


KILLS = int(os.environ.get("TASKMGR_SOAK_KILLS", "8"))


def _reruns_in_history(moves) -> int:
    """Re-runs the history shows: each RESTORING that follows a run (crash restore, retry, interrupt)."""
    count, ran = 0, False
    for move in moves:
        if move.to_status is S.RUNNING:
            ran = True
        elif move.to_status is S.RESTORING and ran:
            count, ran = count + 1, False
    return count


def _wait_while_progressing(mgr: TaskManager, ids: list[int], stall: float = 60.0) -> list:
    """Every task, once all are terminal. The budget follows the work left: after a hundred kills
    the last node may have thousands of tasks still to run, so no bound per task, only on a stall
    (``stall`` seconds in which no task finished)."""
    done, since = -1, time.monotonic()
    while True:
        try:
            return mgr.wait_many(ids, timeout=5)
        except WaitTimeout:
            now_done = sum(t.terminal for t in mgr.list(ids=ids, limit=-1))
            if now_done > done:
                done, since = now_done, time.monotonic()
            assert time.monotonic() - since < stall, f"{len(ids) - done} tasks made no progress for {stall} s"


@pytest.mark.slow
def test_a_node_killed_again_and_again_under_load_loses_nothing(db_path: str, tmp_path) -> None:
    """A child node is SIGKILLed at random moments while another process submits; then everything is checked."""
    from childjobs import kill_loop_types

    runs_log = str(tmp_path / "runs.log")
    TaskManager(db_path).shutdown()
    rnd = random.Random(20261128)
    submit_seconds = 1.0 + KILLS * 0.5
    sub = subprocess.Popen([sys.executable, os.path.join(HERE, "childjobs.py"), "submitter", db_path,
                            str(submit_seconds), "7"], stdout=subprocess.PIPE, text=True, cwd=HERE)
    kills = 0
    for _ in range(KILLS):
        node = subprocess.Popen([sys.executable, os.path.join(HERE, "childjobs.py"), "node", db_path, runs_log],
                                stdout=subprocess.PIPE, text=True, cwd=HERE)
        assert node.stdout.readline().strip() == "up"
        time.sleep(rnd.uniform(0.05, 0.6))  # a random moment: what the test is about, not a wait for a result
        node.kill()
        node.wait(WAIT)
        node.stdout.close()
        kills += 1
    out, _ = sub.communicate(timeout=submit_seconds + WAIT)
    acked = [int(x) for x in out.split()]
    assert acked, "the submitter acknowledged nothing"
    final = TaskManager(db_path, workers=4, poll_interval=0.05, max_restores=50)
    kill_loop_types(final, runs_log)
    with final:
        tasks = dict(zip(acked, _wait_while_progressing(final, acked), strict=True))
        history = final.history()
    print(f"\nsurvived {kills} SIGKILLs; checked {len(acked)} acknowledged tasks "
          f"({sum(t.status is S.SUCCESS for t in tasks.values())} succeeded, "
          f"{sum(t.status is S.CANCELLED for t in tasks.values())} cancelled, "
          f"{sum(t.retries for t in tasks.values())} re-runs)")
    assert all(t.terminal for t in tasks.values())
    check_history(history)
    by_task: dict[int, list] = {}
    for move in history:
        by_task.setdefault(move.task_id, []).append(move)
    for tid, task in tasks.items():
        moves = by_task[tid]
        assert task.retries == _reruns_in_history(moves), (tid, task.retries, moves)
        assert task.retries <= 2 + 50  # max_retries plus restores
    ended_at = {tid: by_task[tid][-1].at for tid in tasks}
    with open(runs_log) as f:
        for line in f:
            tid, at = map(int, line.split())
            if tid in ended_at:
                assert at <= ended_at[tid], f"task {tid} started a run at {at}, after it ended at {ended_at[tid]}"


def test_a_write_lock_held_too_long_gives_a_clear_error_and_writes_nothing(db_path: str, gates: Gates) -> None:
    import sqlite3

    mgr = TaskManager(db_path, busy_timeout=0.1)
    register_test_types(mgr, gates)
    kept = mgr.submit("echo", "before")
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with pytest.raises(StoreError, match=r"the task database stayed locked: another connection held the "
                                             r"write lock past busy_timeout \(0.1 s\); nothing was written"):
            mgr.submit("echo", "during")
        assert [t.id for t in mgr.list()] == [kept]  # and reads go on
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert mgr.submit("echo", "after") > kept
    mgr.shutdown()


