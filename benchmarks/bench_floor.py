"""The floor under the throughput figure: what SQLite and one thread hand-off cost per task, alone.

Run ``python benchmarks/bench_floor.py``. For each ``synchronous`` level it
prints what a no-op task costs with no manager at all, on the manager's own
schema (a store is created, then driven with raw ``sqlite3``):

* ``sql, one commit per task``: per task, in one transaction, the INSERT of
  a RUNNING row, the UPDATE of the previous task to SUCCESS, the history
  rows of both, and the COMMIT: the statements the manager runs per task
  under a stream of submissions, with nothing else.
* ``hand-off``: one round trip between two threads through a
  ``queue.SimpleQueue``. A task crosses threads twice: to the worker that
  runs it, and its outcome back to the thread that commits; each crossing
  is a GIL hand-off, whatever carries it.

Compare with ``bench_huey.py``: at NORMAL, three times huey's throughput
leaves less time per task than these two floors add up to, before a single
line of the manager's Python runs.
"""

from __future__ import annotations

import argparse
import os
import queue
import sqlite3
import statistics
import tempfile
import threading
import time

from taskmgr.store import Store


def sql_floor(sync: str, n: int) -> float:
    """Seconds per task of the statements alone, one transaction per task."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.db")
        Store(path, group_commit=False).close()  # the manager's tables and indexes
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=wal")
        db.execute(f"PRAGMA synchronous={sync}")
        c = db.cursor()
        insert = ("INSERT INTO taskmgr_task (graphspace, graph, type, name, callable, input, owner, max_retries, "
                  "retry_delay, run_at, ran, status, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
        finish = "UPDATE taskmgr_task SET result = ?, progress = ?, status = ?, updated = ? WHERE id = ? AND status = ?"
        history = "INSERT INTO taskmgr_history (task_id, from_status, to_status, at) VALUES "
        prev = None
        t0 = time.perf_counter()
        for _ in range(n):
            now = int(time.time() * 1000)
            c.execute("BEGIN IMMEDIATE")
            c.execute(insert, ("DEFAULT", "hugegraph", "noop", "noop", "m.f", None, "node", 0, 1.0, None, 1,
                               "running", now, now))
            tid = c.lastrowid
            rows = [(tid, None, "new", now), (tid, "new", "queued", now), (tid, "queued", "running", now)]
            if prev is not None:
                c.execute(finish, ("true", 0, "success", now, prev, "running"))
                rows.append((prev, "running", "success", now))
            c.execute(history + ", ".join(["(?, ?, ?, ?)"] * len(rows)), [v for r in rows for v in r])
            c.execute("COMMIT")
            prev = tid
        elapsed = time.perf_counter() - t0
        db.close()
    return elapsed / n


def handoff_floor(n: int) -> float:
    """Seconds per round trip: one thread puts, another takes and answers, the first takes the answer."""
    there: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()

    def worker() -> None:
        while (item := there.get()) is not None:
            back.put(item)

    t = threading.Thread(target=worker)
    t.start()
    t0 = time.perf_counter()
    for i in range(n):
        there.put(i)
        back.get()
    elapsed = time.perf_counter() - t0
    there.put(None)
    t.join()
    return elapsed / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sync", nargs="+", default=["FULL", "NORMAL"])
    args = p.parse_args()
    hand = statistics.median(handoff_floor(args.tasks) for _ in range(args.repeat))
    print(f"hand-off between two threads, round trip: {hand * 1e6:6.1f} us")
    for sync in args.sync:
        sql = statistics.median(sql_floor(sync, args.tasks) for _ in range(args.repeat))
        print(f"[{sync}] sql, one commit per task: {sql * 1e6:6.1f} us/task ({1 / sql:6.0f} tasks/s); "
              f"with one hand-off: {(sql + hand) * 1e6:6.1f} us/task ({1 / (sql + hand):6.0f} tasks/s)")


if __name__ == "__main__":
    main()
