"""The store's commit machinery: calls deferred to the next commit, and the WAL checkpointer."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from conftest import WAIT
from taskmgr import TaskManager, TaskStatus
from taskmgr.store import Store

S = TaskStatus

ROW = {"graphspace": "DEFAULT", "graph": "g", "type": "t", "name": "n", "callable": "m.f"}


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "s.db"), synchronous="NORMAL")
    yield s
    s.close()


def _insert(store: Store) -> int:
    return store.write(lambda tx: tx.insert(dict(ROW)))


def _committed(path: str, tid: int) -> bool:
    """Whether another connection sees task ``tid``: whether its transaction has committed."""
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT 1 FROM taskmgr_task WHERE id = ?", (tid,)).fetchone() is not None
    finally:
        con.close()


def test_a_call_deferred_after_a_quiet_spell_runs_at_once_on_the_calling_thread(store: Store) -> None:
    _insert(store)
    time.sleep(2 * store.DEFER_MAX)
    _insert(store)  # the last two commits are further apart than DEFER_MAX: no stream
    ran = []
    store.defer(lambda: ran.append(threading.get_ident()))
    assert ran == [threading.get_ident()]


def test_in_a_stream_a_deferred_call_runs_just_before_the_next_commit(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(Store, "DEFER_MAX", 30.0)  # everything is a stream; the flusher never steps in
    _insert(store)
    _insert(store)
    seen = []
    store.defer(lambda: seen.append(("ran", threading.get_ident())))
    assert seen == []  # not yet: it waits for the next commit

    def op(tx):
        tid = tx.insert(dict(ROW))
        seen.append(("op", tid))
        return tid

    tid = store.write(op)
    assert seen[0][0] == "op" and seen[1] == ("ran", threading.get_ident())  # the leader, in that batch
    assert _committed(store.db.database, tid)


def test_a_deferred_call_sees_its_batch_not_yet_committed(store: Store, monkeypatch) -> None:
    """It runs before the COMMIT statement, so that what it starts overlaps the commit's wait."""
    monkeypatch.setattr(Store, "DEFER_MAX", 30.0)
    _insert(store)
    _insert(store)
    box: dict[str, int] = {}
    visible = []
    store.defer(lambda: visible.append(_committed(store.db.database, box["tid"])))

    def op(tx):
        box["tid"] = tx.insert(dict(ROW))

    store.write(op)
    assert visible == [False]
    assert _committed(store.db.database, box["tid"])


def test_a_deferred_call_that_no_commit_takes_is_run_by_the_flusher(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(Store, "DEFER_MAX", 0.05)
    _insert(store)
    _insert(store)
    done = threading.Event()
    where = []
    t0 = time.monotonic()
    store.defer(lambda: (where.append(threading.current_thread().name), done.set()))
    assert done.wait(WAIT)
    assert time.monotonic() - t0 >= 0.05 * 0.9
    assert where == ["taskmgr-flusher"]


def test_close_runs_what_is_still_deferred(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(Store, "DEFER_MAX", 30.0)
    _insert(store)
    _insert(store)
    ran = []
    store.defer(lambda: ran.append(1))
    store.close()
    assert ran == [1]
    store.defer(lambda: ran.append(2))  # closed: at once
    assert ran == [1, 2]


def test_a_failing_deferred_call_does_not_fail_the_commit(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(Store, "DEFER_MAX", 30.0)
    _insert(store)
    _insert(store)
    store.defer(lambda: 1 / 0)
    tid = _insert(store)
    assert _committed(store.db.database, tid)


def test_a_task_whose_worker_waits_for_the_next_commit_can_be_cancelled_meanwhile(tmp_path, monkeypatch) -> None:
    """A stream's task waits, RUNNING, for the next commit to wake its worker; a cancel that comes
    meanwhile reaches it (the cancel's own commit wakes the worker, and the cancel is delivered
    when the callable starts, or to the running callable)."""
    monkeypatch.setattr(Store, "DEFER_MAX", 30.0)  # only a commit wakes them; the flusher never does
    started = {}

    def sleeper(ctx):
        started[ctx.task_id] = True
        ctx.sleep(WAIT)

    # sleepers only, and no housekeeping poll: no commit comes unless the test makes one
    with TaskManager(str(tmp_path / "m.db"), workers=3, poll_interval=60) as m:
        m.register("sleep", sleeper)
        a, b, c = (m.submit("sleep") for _ in range(3))  # each submit's commit wakes the one before
        deadline = time.monotonic() + WAIT
        while not (a in started and b in started) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert a in started and b in started
        assert m.get(c).status is S.RUNNING and c not in started  # committed RUNNING, worker not woken
        for tid in (a, b, c):
            assert m.cancel(tid)
        assert [m.wait(tid, WAIT).status for tid in (a, b, c)] == [S.CANCELLED] * 3
