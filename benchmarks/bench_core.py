"""Core figures of the manager: throughput, submit and start latency, cancel latency.

Run ``python benchmarks/bench_core.py`` (``--help`` for the knobs). Prints one
line per figure; medians over ``--repeat`` runs where it says so. Nothing
here is a pass/fail test: the figures go to ``benchmarks/README.rst``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from taskmgr import TaskContext, TaskManager, TaskStatus


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


STARTED: dict[int, threading.Event] = {}


def _sleeper(ctx: TaskContext) -> None:
    STARTED.setdefault(ctx.task_id, threading.Event()).set()
    ctx.sleep(60)


def _manager(path: str, sync: str, workers: int = 4) -> TaskManager:
    mgr = TaskManager(path, workers=workers, synchronous=sync)
    mgr.register("noop", lambda ctx: None)
    mgr.register("sleep", _sleeper)
    return mgr


def throughput(sync: str, n: int) -> tuple[float, list[float]]:
    """No-op tasks submitted one by one, 4 workers: tasks/s from first submit to last SUCCESS."""
    with tempfile.TemporaryDirectory() as tmp:
        mgr = _manager(os.path.join(tmp, "t.db"), sync)
        with mgr:
            lat = []
            t0 = time.perf_counter()
            ids = []
            for _ in range(n):
                s = time.perf_counter()
                ids.append(mgr.submit("noop"))
                lat.append(time.perf_counter() - s)
            assert all(task.status is TaskStatus.SUCCESS for task in mgr.wait_many(ids, 120))
            elapsed = time.perf_counter() - t0
    return n / elapsed, lat


def batch_submit(sync: str, n: int) -> float:
    """submit_many of n tasks to an idle manager: tasks/s to durable acknowledgement."""
    with tempfile.TemporaryDirectory() as tmp:
        mgr = _manager(os.path.join(tmp, "t.db"), sync)
        t0 = time.perf_counter()
        mgr.submit_many("noop", [{"i": i} for i in range(n)])
        elapsed = time.perf_counter() - t0
        mgr.shutdown()
    return n / elapsed


def start_latency(sync: str, n: int) -> list[float]:
    """Seconds from submit() to the callable running, one task at a time on an idle manager."""
    began: dict[int, float] = {}
    done: dict[int, threading.Event] = {}

    def mark(ctx: TaskContext) -> None:
        began[ctx.task_id] = time.perf_counter()
        done.setdefault(ctx.task_id, threading.Event()).set()

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        mgr = _manager(os.path.join(tmp, "t.db"), sync)
        mgr.register("mark", mark)
        with mgr:
            for _ in range(n):
                time.sleep(0.002)  # idle between tasks: every start is a cold one
                t0 = time.perf_counter()
                tid = mgr.submit("mark")
                assert done.setdefault(tid, threading.Event()).wait(10)
                out.append(began[tid] - t0)
    return out


def stream_start_latency(sync: str, n: int) -> list[float]:
    """Seconds from submit() to the callable running, for tasks submitted one by one with no pause
    (a stream: each worker is woken as the next commit waits for the disk, the last one's by the
    flusher)."""
    began: dict[int, float] = {}
    asked: dict[int, float] = {}

    def mark(ctx: TaskContext) -> None:
        began[ctx.task_id] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        mgr = _manager(os.path.join(tmp, "t.db"), sync)
        mgr.register("mark", mark)
        with mgr:
            for _ in range(n):
                t0 = time.perf_counter()
                asked[mgr.submit("mark")] = t0
            for tid in asked:
                mgr.wait(tid, 30)
    return [began[tid] - asked[tid] for tid in asked]


def _stamp_cancelled(mgr: TaskManager, stamps: dict[int, float]) -> None:
    """Record when each task's CANCELLED was committed (a commit listener: the moment it became true)."""

    def listen(changes: list) -> None:
        now = time.time()
        for tid, _frm, to in changes:
            if to is TaskStatus.CANCELLED:
                stamps[tid] = now

    mgr._store.add_listener(listen)


def cancel_many(sync: str, n: int, cross: bool) -> list[float]:
    """``n`` tasks sleeping in ctx.sleep at once (``n`` workers), all cancelled one after another,
    in this process or from another: seconds from each cancel() to its CANCELLED commit."""
    stamps: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.db")
        mgr = _manager(path, sync, workers=n)
        _stamp_cancelled(mgr, stamps)
        with mgr:
            ids = mgr.submit_many("sleep", [None] * n)
            for tid in ids:
                assert STARTED.setdefault(tid, threading.Event()).wait(30)
            asked: dict[int, float] = {}
            if cross:
                child = subprocess.Popen(
                    [sys.executable, "-c", _CANCELLER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
                child.stdin.write("".join(f"{tid}\n" for tid in ids))
                child.stdin.close()
                for tid in ids:
                    asked[tid] = float(child.stdout.readline())
                child.wait(30)
            else:
                for tid in ids:
                    asked[tid] = time.time()
                    mgr.cancel(tid)
            for tid in ids:
                assert mgr.wait(tid, 30).status is TaskStatus.CANCELLED
    return [stamps[tid] - asked[tid] for tid in ids]


def cancel_in_process(sync: str, n: int) -> list[float]:
    """Seconds from cancel() to CANCELLED seen by wait(), for tasks sleeping in ctx.sleep."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        mgr = _manager(os.path.join(tmp, "t.db"), sync)
        with mgr:
            for _ in range(n):
                tid = mgr.submit("sleep")
                STARTED.setdefault(tid, threading.Event()).wait(10)
                t0 = time.perf_counter()
                mgr.cancel(tid)
                assert mgr.wait(tid, 10).status is TaskStatus.CANCELLED
                out.append(time.perf_counter() - t0)
    return out


_CANCELLER = """
import sys, time
from taskmgr import TaskManager
mgr = TaskManager(sys.argv[1])
for line in sys.stdin:
    t0 = time.time()
    mgr.cancel(int(line))
    print(t0, flush=True)
"""


def cancel_cross_process(sync: str, n: int) -> list[float]:
    """Seconds from another process's cancel() to CANCELLED seen here, at the default poll_interval."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.db")
        mgr = _manager(path, sync)
        with mgr:
            child = subprocess.Popen(
                [sys.executable, "-c", _CANCELLER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            for _ in range(n):
                tid = mgr.submit("sleep")
                STARTED.setdefault(tid, threading.Event()).wait(10)
                # a random phase: otherwise each cancel lands just after the poll that saw the previous one
                time.sleep(random.uniform(0, mgr.poll_interval))
                child.stdin.write(f"{tid}\n")
                child.stdin.flush()
                t0 = float(child.stdout.readline())
                assert mgr.wait(tid, 10).status is TaskStatus.CANCELLED
                out.append(time.time() - t0)
            child.stdin.close()
            child.wait(10)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=5000, help="no-op tasks per throughput run")
    p.add_argument("--batch", type=int, default=100_000, help="tasks in the batch submission")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (medians reported)")
    p.add_argument("--cancels", type=int, default=50, help="cancels measured per kind")
    p.add_argument("--sleepers", type=int, default=200, help="tasks sleeping at once in the cancel-all runs")
    p.add_argument("--starts", type=int, default=200, help="cold starts measured")
    p.add_argument("--sync", nargs="+", default=["FULL", "NORMAL"])
    args = p.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.tasks} tasks x {args.repeat} runs")
    for sync in args.sync:
        rates, lats = [], []
        for _ in range(args.repeat):
            rate, lat = throughput(sync, args.tasks)
            rates.append(rate)
            lats += lat
        print(f"[{sync}] throughput, no-op tasks, 4 workers: {statistics.median(rates):8.0f} tasks/s "
              f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")
        print(f"[{sync}] submit latency: p50 {_percentile(lats, 0.5) * 1e3:.3f} ms, "
              f"p99 {_percentile(lats, 0.99) * 1e3:.3f} ms")
        st = start_latency(sync, args.starts)
        print(f"[{sync}] start latency (submit -> callable running), idle manager: p50 {_percentile(st, 0.5) * 1e3:.3f} ms, "
              f"p99 {_percentile(st, 0.99) * 1e3:.3f} ms")
        ss = stream_start_latency(sync, args.tasks)
        print(f"[{sync}] start latency, {args.tasks} tasks submitted in a stream: "
              f"p50 {_percentile(ss, 0.5) * 1e3:.3f} ms, p99 {_percentile(ss, 0.99) * 1e3:.3f} ms, "
              f"max {max(ss) * 1e3:.3f} ms")
        b = statistics.median(batch_submit(sync, args.batch) for _ in range(args.repeat))
        print(f"[{sync}] submit_many of {args.batch}: {b:8.0f} tasks/s")
        c = cancel_in_process(sync, args.cancels)
        print(f"[{sync}] cancel -> CANCELLED in-process: p50 {_percentile(c, 0.5) * 1e3:.2f} ms, "
              f"p99 {_percentile(c, 0.99) * 1e3:.2f} ms")
        x = cancel_cross_process(sync, max(5, args.cancels // 5))
        print(f"[{sync}] cancel -> CANCELLED across processes (default poll 0.2 s): p50 {_percentile(x, 0.5) * 1e3:.1f} ms, "
              f"p99 {_percentile(x, 0.99) * 1e3:.1f} ms")
        for cross in (False, True):
            m = cancel_many(sync, args.sleepers, cross)
            where = "across processes" if cross else "in-process"
            print(f"[{sync}] cancel all of {args.sleepers} sleeping tasks, {where}: p50 {_percentile(m, 0.5) * 1e3:.1f} ms, "
                  f"p99 {_percentile(m, 0.99) * 1e3:.1f} ms, max {max(m) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
