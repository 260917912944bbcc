"""Throughput side by side with huey's SqliteHuey, in the same run, at equal durability.

Run ``pip install -e '.[bench]'`` then ``python benchmarks/bench_huey.py``.
Workload (the performance issue's first): N no-op tasks submitted one by one
from one thread, run by 4 worker threads; tasks/s from the first submit to the
last result (huey: the last result read back; taskmgr: the last SUCCESS, seen
by one ``wait_many`` of every id; ``--wait each`` waits task by task instead,
one read per task, as huey's results are read). Both use SQLite in WAL mode
at the same ``synchronous`` level, FULL then NORMAL.
Medians of ``--repeat`` alternating runs, their ratio, and the median of the
ratios of each taskmgr run to the huey run that follows it (steadier when the
machine's speed drifts during the runs).

``--huey-mode after`` starts huey's consumer only once every task is
enqueued: huey's fastest configuration (its workers then drain a full queue
without competing with the enqueues); ``concurrent`` (the default) runs the
consumer while the tasks are enqueued, as taskmgr's workers do. The clock
runs from the first enqueue to the last result in both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from taskmgr import TaskManager, TaskStatus

_LEVEL = {"OFF": 0, "NORMAL": 1, "FULL": 2}


def run_taskmgr(sync: str, n: int, wait: str = "many") -> float:
    with tempfile.TemporaryDirectory() as tmp:
        mgr = TaskManager(os.path.join(tmp, "t.db"), workers=4, synchronous=sync)
        mgr.register("noop", lambda ctx: True)
        with mgr:
            t0 = time.perf_counter()
            ids = [mgr.submit("noop") for _ in range(n)]
            if wait == "many":
                assert all(task.status is TaskStatus.SUCCESS for task in mgr.wait_many(ids, 120))
            else:
                for tid in ids:
                    assert mgr.wait(tid, 120).status is TaskStatus.SUCCESS
            return n / (time.perf_counter() - t0)


def run_huey(sync: str, n: int, mode: str = "concurrent") -> float:
    from huey import Huey
    from huey.storage import SqliteStorage

    class Storage(SqliteStorage):  # huey's fsync flag knows only FULL and OFF: set the level itself
        def _create_connection(self):  # type: ignore[no-untyped-def]
            conn = super()._create_connection()
            conn.execute(f"pragma synchronous={_LEVEL[sync]}")
            return conn

    with tempfile.TemporaryDirectory() as tmp:
        huey = Huey("bench", storage_class=Storage, filename=os.path.join(tmp, "h.db"))

        @huey.task()
        def noop() -> bool:  # a result must be stored for the submitter to see the end (huey skips None)
            return True

        consumer = huey.create_consumer(workers=4, worker_type="thread", periodic=False,
                                        initial_delay=0.001, backoff=1.0, max_delay=0.001)
        if mode == "concurrent":
            consumer.start()  # worker threads only; no signal handling loop
        try:
            t0 = time.perf_counter()
            results = [noop() for _ in range(n)]
            if mode == "after":
                consumer.start()
            for r in results:
                assert r.get(blocking=True, timeout=120) is True
            return n / (time.perf_counter() - t0)
        finally:
            consumer.stop(graceful=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sync", nargs="+", default=["FULL", "NORMAL"])
    p.add_argument("--huey-mode", choices=["concurrent", "after"], default="concurrent",
                   help="huey's consumer runs during the enqueues, or starts after them (its fastest)")
    p.add_argument("--wait", choices=["many", "each"], default="many",
                   help="how taskmgr's side waits for the last SUCCESS: one wait_many (default) or a wait per task")
    args = p.parse_args()
    try:
        import huey
    except ImportError:
        sys.exit("bench_huey needs huey: pip install -e '.[bench]'")
    waiting = "one wait_many" if args.wait == "many" else "a wait per task"
    print(f"python {sys.version.split()[0]}, huey {huey.__version__}, {args.tasks} no-op tasks, 4 workers, "
          f"{args.repeat} alternating runs each; taskmgr's side waits with {waiting}; huey's consumer "
          + ("starts after the enqueues" if args.huey_mode == "after" else "runs during the enqueues"))
    for sync in args.sync:
        ours, theirs = [], []
        for _ in range(args.repeat):
            ours.append(run_taskmgr(sync, args.tasks, args.wait))
            theirs.append(run_huey(sync, args.tasks, args.huey_mode))
        a, b = statistics.median(ours), statistics.median(theirs)
        # each taskmgr run next to the huey run right after it: the machine's speed drifts (by 20% in
        # a few minutes on the development machine), and a pair shares the moment
        paired = statistics.median(x / y for x, y in zip(ours, theirs))
        print(f"[{sync}] taskmgr {a:7.0f} tasks/s  huey {b:7.0f} tasks/s  ratio {a / b:4.2f}x  "
              f"median of paired ratios {paired:4.2f}x  "
              f"(taskmgr runs: {', '.join(f'{x:.0f}' for x in ours)}; huey runs: {', '.join(f'{x:.0f}' for x in theirs)})")


if __name__ == "__main__":
    main()
