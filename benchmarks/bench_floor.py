"""The floor under the throughput figure: the same work per task with no manager at all.

Run ``python benchmarks/bench_floor.py``. For each ``synchronous`` level it
drives the manager's own schema (a store is created, then used through raw
``sqlite3``) the way the manager does under a stream of no-op tasks, and
prints tasks/s:

* ``sql alone``: one thread; per task, in one transaction, the INSERT of a
  RUNNING row with its history (NEW, QUEUED, RUNNING), the UPDATE of the
  previous task to SUCCESS appending its history entry, and the COMMIT: the
  manager's statements (each task's history is in its row).
* ``pipeline``: the same statements from one submitting thread, each task
  handed to one of 4 worker threads that hands its id back; outcomes ride
  along with the next commit, a worker is woken just before the next COMMIT
  (as ``Store.defer`` does), and at NORMAL a thread of its own checkpoints
  the WAL (as the store does). This is the workload of ``bench_huey.py``
  with every line of the manager's Python taken out.
* ``lean model``: the pipeline plus the least Python a manager has to run
  per task: a call that looks the type up and builds the row, an operation
  object queued under a lock for a leader that takes the queue, a context
  object per task and the result's JSON, the outcome's compare-and-set with
  its history entry and a list of changes, and at the end one read per task as
  ``wait`` does. Not a manager (no savepoints, callbacks, cancellation, or
  errors): a bound on how far one written for this path could go.

The history entries are the manager's format, a JSON array per line.

With huey installed (``pip install -e '.[bench]'``) it runs huey's figure
from ``bench_huey.py`` in the same sitting and prints how many times huey's
throughput the floor is, and how many microseconds per task three times
huey's throughput leaves for the manager's own work on top of the floor.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

from taskmgr.store import Store

_INSERT = ("INSERT INTO taskmgr_task (graphspace, graph, type, name, callable, input, owner, max_retries, "
           "retry_delay, run_at, ran, status, created, updated, history) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
_FINISH = ("UPDATE taskmgr_task SET result = ?, progress = ?, status = ?, updated = ?, "
           "history = COALESCE(history, '') || ? WHERE id = ? AND status = ?")


def _created(now: int) -> str:
    """The history of a task created RUNNING, in the manager's format."""
    return f'[null,"new",{now}]\n["new","queued",{now}]\n["queued","running",{now}]\n'


def _finished(now: int) -> str:
    return f'["running","success",{now}]\n'


def _open(tmp: str, sync: str, autocheckpoint: int | None) -> tuple[str, sqlite3.Connection]:
    path = os.path.join(tmp, "t.db")
    Store(path, group_commit=False).close()  # the manager's tables and indexes
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=wal")
    db.execute(f"PRAGMA synchronous={sync}")
    if autocheckpoint is not None:
        db.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
    return path, db


def _batch(c: sqlite3.Cursor, finished: list[int]) -> int:
    """One task's transaction, up to (not including) its COMMIT: insert it RUNNING, finish the
    tasks in ``finished``, each with its history. Returns the new id."""
    now = int(time.time() * 1000)
    c.execute("BEGIN IMMEDIATE")
    c.execute(_INSERT, ("DEFAULT", "hugegraph", "noop", "noop", "m.f", None, "node", 0, 1.0, None, 1, "running",
                        now, now, _created(now)))
    tid = int(c.lastrowid)
    for prev in finished:
        c.execute(_FINISH, ("true", 0, "success", now, _finished(now), prev, "running"))
    return tid


def sql_alone(sync: str, n: int) -> float:
    """Tasks/s of the statements alone, one thread, one transaction per task."""
    with tempfile.TemporaryDirectory() as tmp:
        _path, db = _open(tmp, sync, None)
        c = db.cursor()
        prev: list[int] = []
        t0 = time.perf_counter()
        for _ in range(n):
            prev = [_batch(c, prev)]
            c.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        db.close()
    return n / elapsed


_BACKGROUND = ("NORMAL", "OFF")  # the levels at which the store checkpoints on a thread of its own


class _Checkpointer(threading.Thread):
    """The store's background checkpointer, reduced to its loop; as there, it runs only at NORMAL
    and OFF (at FULL the committing connection checkpoints, and this one does nothing)."""

    def __init__(self, path: str, sync: str) -> None:
        super().__init__()
        self.path, self.sync = path, sync
        self.active = sync in _BACKGROUND
        self.due, self.stop = threading.Event(), threading.Event()

    def start(self) -> None:
        if self.active:
            super().start()

    def committed(self, i: int) -> None:
        """The ``i``-th commit is done: wake the loop every ``Store.CHECKPOINT_EVERY`` commits."""
        if self.active and i % Store.CHECKPOINT_EVERY == Store.CHECKPOINT_EVERY - 1:
            self.due.set()

    def run(self) -> None:
        con = sqlite3.connect(self.path, isolation_level=None)
        con.execute(f"PRAGMA synchronous={self.sync}")
        while self.due.wait() and not self.stop.is_set():
            self.due.clear()
            con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        con.close()

    def close(self) -> None:
        if self.active:
            self.stop.set()
            self.due.set()
            self.join()


def _open_with_checkpointer(tmp: str, sync: str) -> tuple[sqlite3.Connection, _Checkpointer]:
    """The store's file and a started checkpointer, the writers' autocheckpoint set as the store sets it."""
    path, db = _open(tmp, sync, Store.CHECKPOINT_BACKSTOP if sync in _BACKGROUND else None)
    checkpointer = _Checkpointer(path, sync)
    checkpointer.start()
    return db, checkpointer


def pipeline(sync: str, n: int, workers: int = 4) -> float:
    """Tasks/s of the manager's work with the manager taken out (see the module docs)."""
    with tempfile.TemporaryDirectory() as tmp:
        db, checkpointer = _open_with_checkpointer(tmp, sync)
        work: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        done: collections.deque[int] = collections.deque()

        def worker() -> None:
            while (tid := work.get()) is not None:
                done.append(tid)

        threads = [threading.Thread(target=worker) for _ in range(workers)]
        for t in threads:
            t.start()
        c = db.cursor()
        last = None
        t0 = time.perf_counter()
        for i in range(n):
            finished = []
            while done:
                finished.append(done.popleft())
            tid = _batch(c, finished)
            if last is not None:
                work.put(last)  # committed by the previous transaction: its worker runs during this sync
            c.execute("COMMIT")
            last = tid
            checkpointer.committed(i)
        work.put(last)
        for _ in range(workers):
            work.put(None)
        for t in threads:
            t.join()
        c.execute("BEGIN IMMEDIATE")
        now = int(time.time() * 1000)
        for prev in done:
            c.execute(_FINISH, ("true", 0, "success", now, _finished(now), prev, "running"))
        c.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        checkpointer.close()
        db.close()
    return n / elapsed


class _Context:
    __slots__ = ("task_id", "task_type", "name", "input", "graph", "graphspace", "retries", "progress")

    def __init__(self, task_id: int, task_type: str, name: str, input: Any, graph: str, graphspace: str,
                 retries: int, progress: int) -> None:
        self.task_id, self.task_type, self.name, self.input = task_id, task_type, name, input
        self.graph, self.graphspace, self.retries, self.progress = graph, graphspace, retries, progress


class _LeanModel:
    """See ``lean model`` in the module docs."""

    def __init__(self, db: sqlite3.Connection, workers: int) -> None:
        self.cursor = db.cursor()
        self.lock = threading.Lock()
        self.queue: collections.deque[tuple[Any, ...]] = collections.deque()  # ("new", row) / ("done", id, text)
        self.wake: collections.deque[int] = collections.deque()  # committed tasks whose worker waits for a commit
        self.work: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.types = {"noop": lambda ctx: True}
        self.generation = 0
        self.threads = [threading.Thread(target=self.worker) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def submit(self, task_type: str, input: Any = None, *, graph: str = "hugegraph",
               graphspace: str = "DEFAULT") -> int:
        if self.types.get(task_type) is None:
            raise KeyError(task_type)
        now = int(time.time() * 1000)
        op = ["new", (graphspace, graph, task_type, task_type, "m.f", None if input is None else json.dumps(input),
                      "node", 0, 1.0, None, 1, "running", now, now, _created(now))]
        with self.lock:
            self.queue.append(op)  # type: ignore[arg-type]
        self.commit()
        self.wake.append(op[2])
        return op[2]  # type: ignore[no-any-return]

    def commit(self) -> None:
        with self.lock:
            batch = list(self.queue)
            self.queue.clear()
        c, now, changes = self.cursor, int(time.time() * 1000), []
        c.execute("BEGIN IMMEDIATE")
        for op in batch:
            if op[0] == "new":
                c.execute(_INSERT, op[1])
                tid = c.lastrowid
                op.append(tid)  # type: ignore[attr-defined]
                changes += ((tid, None, "new"), (tid, "new", "queued"), (tid, "queued", "running"))
            else:
                c.execute(_FINISH, (op[2], 0, "success", now, _finished(now), op[1], "running"))
                if c.rowcount == 1:
                    changes.append((op[1], "running", "success"))
        while self.wake:
            self.work.put(self.wake.popleft())
        c.execute("COMMIT")
        if any(to == "success" for _, _, to in changes):
            self.generation += 1

    def worker(self) -> None:
        while (tid := self.work.get()) is not None:
            ctx = _Context(tid, "noop", "noop", None, "hugegraph", "DEFAULT", 0, 0)
            value = self.types["noop"](ctx)
            text = "true" if value is True else json.dumps(value)
            with self.lock:
                self.queue.append(("done", tid, text))

    def status(self, tid: int) -> str:
        row = self.cursor.execute("SELECT * FROM taskmgr_task WHERE id = ?", (tid,)).fetchone()
        return str(dict(zip([d[0] for d in self.cursor.description], row, strict=True))["status"])


def lean_model(sync: str, n: int, workers: int = 4) -> float:
    """Tasks/s of the lean model (see the module docs)."""
    with tempfile.TemporaryDirectory() as tmp:
        db, checkpointer = _open_with_checkpointer(tmp, sync)
        model = _LeanModel(db, workers)
        t0 = time.perf_counter()
        ids = []
        for i in range(n):
            ids.append(model.submit("noop"))
            checkpointer.committed(i)
        for tid in ids:
            while model.status(tid) != "success":
                model.commit()  # the last outcomes, and the last wake-up, as the flusher would
        elapsed = time.perf_counter() - t0
        for _ in model.threads:
            model.work.put(None)
        for t in model.threads:
            t.join()
        checkpointer.close()
        db.close()
    return n / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--sync", nargs="+", default=["FULL", "NORMAL"])
    args = p.parse_args()
    try:
        from bench_huey import run_huey
    except ImportError:
        run_huey = None  # type: ignore[assignment]
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {args.tasks} tasks, "
          f"medians of {args.repeat} runs")
    for sync in args.sync:
        alone = statistics.median(sql_alone(sync, args.tasks) for _ in range(args.repeat))
        floor = statistics.median(pipeline(sync, args.tasks) for _ in range(args.repeat))
        lean = statistics.median(lean_model(sync, args.tasks) for _ in range(args.repeat))
        line = (f"[{sync}] sql alone {alone:7.0f} tasks/s; pipeline (the floor) {floor:7.0f} tasks/s; "
                f"lean model {lean:7.0f} tasks/s")
        if run_huey is not None:
            try:
                huey = statistics.median(run_huey(sync, args.tasks) for _ in range(args.repeat))
            except ImportError:
                huey = None
            if huey:
                budget = (1 / (3 * huey) - 1 / floor) * 1e6
                line += (f"; huey {huey:6.0f} tasks/s: the floor is {floor / huey:.2f}x huey, the lean model "
                         f"{lean / huey:.2f}x, and 3x huey leaves {budget:.0f} us per task for the manager's own "
                         "work")
        print(line)


if __name__ == "__main__":
    main()
