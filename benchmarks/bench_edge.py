"""``taskmgr serve`` at its edge: the memory of long lists of big tasks, and a held write lock.

Run ``python benchmarks/bench_edge.py`` (needs the server extra; ``--help``
for the knobs). Two figures, each against a real ``taskmgr serve`` on a free
loopback port:

* **memory**: a database of ``--big-tasks`` tasks (100) of ``--big-mib`` MiB
  inputs (15) each; the server's peak resident memory (VmHWM) before and after
  one ``GET .../tasks?limit=-1`` read to its end, then after four of them at
  once. The file is kept with ``--db`` (it takes a while to write).
* **write lock**: another connection holds SQLite's write lock (``BEGIN
  IMMEDIATE``, what a backup or a ``sqlite3`` shell does) while 12 clients POST
  at once and one client reads ``GET .../tasks?limit=1`` over and over: the
  time each POST took to its answer (503), and the reads' percentiles
  meanwhile; with the server's ``--busy-timeout`` (``--busy``, 5 s, the
  default) and with 0.5 s.

It prints figures and never asserts.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time


def _start(db: str, *args: str) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen([sys.executable, "-m", "taskmgr", "serve", "--db", db, "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    banner = proc.stdout.readline()
    if "serving on" not in banner:
        proc.kill()
        raise SystemExit(f"the server did not start: {banner!r}")
    host, port = banner.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return proc, host, int(port)


def _peak(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _read_list(host: str, port: int) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("GET", "/graphs/big/tasks?limit=-1")
    resp = conn.getresponse()
    total = 0
    while chunk := resp.read(1 << 20):
        total += len(chunk)
    return total


def memory(args: argparse.Namespace, tmp: str) -> None:
    from taskmgr import TaskManager

    db = args.db or os.path.join(tmp, "big.db")
    size = args.big_mib * 1024 * 1024
    mgr = TaskManager(db, synchronous="OFF", max_input_size=size + 1024, workers=1)
    if not mgr.list(limit=1, graph="big", graphspace="DEFAULT"):
        mgr.register("big", lambda ctx: None)
        t0 = time.perf_counter()
        with mgr:  # run to SUCCESS: finished tasks, as a list usually shows (a start leaves them alone)
            ids = [mgr.submit("big", "x" * (size - 2), graph="big") for _ in range(args.big_tasks)]
            mgr.wait_many(ids, timeout=600)
        print(f"stored {args.big_tasks} tasks of {args.big_mib} MiB in {time.perf_counter() - t0:.1f} s")
    else:
        mgr.shutdown()
    proc, host, port = _start(db)
    try:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.request("GET", "/graphs/big/tasks?limit=1")
        conn.getresponse().read()
        idle = _peak(proc.pid)
        t0 = time.perf_counter()
        body = _read_list(host, port)
        one = _peak(proc.pid)
        took = time.perf_counter() - t0
        readers = [threading.Thread(target=_read_list, args=(host, port)) for _ in range(4)]
        for r in readers:
            r.start()
        for r in readers:
            r.join()
        four = _peak(proc.pid)
        print(f"memory: {args.big_tasks} tasks of {args.big_mib} MiB, GET ?limit=-1 ({body / 2**20:.0f} MiB in "
              f"{took:.1f} s): peak resident {idle:.0f} MiB before, {one:.0f} MiB after one list, "
              f"{four:.0f} MiB after four at once")
    finally:
        proc.terminate()
        proc.wait(30)


def write_lock(busy: float, tmp: str) -> None:
    db = os.path.join(tmp, f"lock-{busy:g}.db")
    proc, host, port = _start(db, "--examples", "--busy-timeout", str(busy))
    holder = sqlite3.connect(db, timeout=10)
    try:
        holder.execute("BEGIN IMMEDIATE")
        posts: list[tuple[int, float]] = []

        def post() -> None:
            conn = http.client.HTTPConnection(host, port, timeout=120)
            t0 = time.monotonic()
            conn.request("POST", "/graphs/g/jobs/count", body=b"{}", headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            posts.append((resp.status, time.monotonic() - t0))

        threads = [threading.Thread(target=post) for _ in range(12)]
        for t in threads:
            t.start()
        reads: list[float] = []
        conn = http.client.HTTPConnection(host, port, timeout=120)
        while any(t.is_alive() for t in threads):
            t0 = time.monotonic()
            conn.request("GET", "/graphs/g/tasks?limit=1")
            conn.getresponse().read()
            reads.append(time.monotonic() - t0)
        reads.sort()
        statuses = sorted(s for s, _ in posts)
        took = " ".join(f"{d:.2f}" for d in sorted(d for _, d in posts))
        print(f"write lock held, --busy-timeout {busy:g}: 12 POSTs answered {statuses} after {took} s; "
              f"{len(reads)} reads meanwhile: p50 "
              f"{reads[len(reads) // 2] * 1e3:.1f} ms, p99 {reads[int(0.99 * (len(reads) - 1))] * 1e3:.1f} ms, "
              f"max {reads[-1] * 1e3:.1f} ms")
    finally:
        holder.rollback()
        holder.close()
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big-tasks", type=int, default=100)
    p.add_argument("--big-mib", type=int, default=15)
    p.add_argument("--db", help="the database of big tasks to fill (or reuse); default: a temporary file")
    p.add_argument("--busy", type=float, default=5.0, help="the server's --busy-timeout for the lock figure")
    p.add_argument("--skip-memory", action="store_true", help="only the write lock's figures")
    p.add_argument("--skip-lock", action="store_true", help="only the memory figures")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="taskmgr-bench-")
    if not args.skip_memory:
        memory(args, tmp)
    if not args.skip_lock:
        for busy in sorted({args.busy, 0.5}):
            write_lock(busy, tmp)


if __name__ == "__main__":
    main()
