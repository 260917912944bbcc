"""Paired A/B of the speed mechanisms: each one off, against all of them on.

Three mechanisms buy the no-op throughput its last percents, and each has a knob:

* ``tries``: a task that found every worker busy is tried by the next commits
  (``TaskManager.START_TRIES``; off: 0, a worker starts it);
* ``defer``: a task committed RUNNING is handed to its worker as the next commit
  waits for the disk (``Store.DEFER_MAX``; off: 0, handed over at once);
* ``poll``: an idle drain polls the FIFO under a stream instead of parking
  (``PoolExecutor.POLLERS``; off: 0, every idle drain parks).

Each run is a fresh process (``--child``) that submits ``--tasks`` no-op tasks one by one to a
started manager with 4 workers and waits for them with ``wait_many``. A and B alternate, A B A B
..., ``--repeat`` pairs; it prints each side's median tasks/s and the median of the paired ratios
(B/A: above 1 means the mechanism off is faster). A mechanism earns its place when removing it
costs more than about 2%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MECHANISMS = ("tries", "defer", "poll")


def child(tasks: int, sync: str, off: list[str]) -> None:
    from taskmgr import TaskManager
    from taskmgr.executor import PoolExecutor
    from taskmgr.store import Store

    if "tries" in off:
        TaskManager.START_TRIES = 0
    if "defer" in off:
        Store.DEFER_MAX = 0.0
    if "poll" in off:
        PoolExecutor.POLLERS = 0
    with tempfile.TemporaryDirectory() as tmp:
        mgr = TaskManager(os.path.join(tmp, "ab.db"), workers=4, synchronous=sync)
        mgr.register("noop", lambda ctx: None)
        with mgr:
            for _ in range(200):  # warm up
                mgr.submit("noop")
            t0 = time.perf_counter()
            ids = [mgr.submit("noop") for _ in range(tasks)]
            mgr.wait_many(ids, timeout=600)
            elapsed = time.perf_counter() - t0
    print(json.dumps({"tasks_per_s": tasks / elapsed}))


def run(tasks: int, sync: str, off: list[str]) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", "--tasks", str(tasks), "--sync", sync,
                          "--off", *off] if off else
                         [sys.executable, __file__, "--child", "--tasks", str(tasks), "--sync", sync],
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["tasks_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sync", nargs="+", default=["NORMAL", "FULL"])
    parser.add_argument("--mechanisms", nargs="+", default=list(MECHANISMS), choices=MECHANISMS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--off", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.tasks, args.sync[0], args.off)
        return
    print(f"python {sys.version.split()[0]}, {args.tasks} no-op tasks, 4 workers, {args.repeat} pairs per line")
    for sync in args.sync:
        for mechanism in args.mechanisms:
            a_runs, b_runs, ratios = [], [], []
            for _ in range(args.repeat):
                a = run(args.tasks, sync, [])
                b = run(args.tasks, sync, [mechanism])
                a_runs.append(a)
                b_runs.append(b)
                ratios.append(b / a)
            print(f"[{sync}] {mechanism:>5} off: {statistics.median(b_runs):7.0f} tasks/s against "
                  f"{statistics.median(a_runs):7.0f} with all on; median paired ratio {statistics.median(ratios):.3f} "
                  f"(ratios {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)


if __name__ == "__main__":
    main()
