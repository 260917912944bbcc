"""The REST server under load: GET one task, and a list of 100, over a store of many tasks.

Run ``python benchmarks/bench_rest.py`` (needs the server extra; ``--help``
for the knobs). It fills a database (1,000,000 tasks across 10 graphs and
all the terminal statuses by default; the file is reused between runs), starts
``taskmgr serve`` on a free loopback port, and drives it from a *separate*
load-generating process over keep-alive connections. Prints requests/s and
latency percentiles per endpoint.
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

LOADGEN = r"""
import http.client, json, sys, threading, time
host, port, path_template, n, threads, id_max = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
lat = [[] for _ in range(threads)]
errors = [0] * threads
def run(k):
    conn = http.client.HTTPConnection(host, port, timeout=30)
    x = 1 + k * 7919
    for i in range(n // threads):
        x = (x * 48271) % 2147483647
        tid = 1 + x % id_max
        path = path_template.replace("{id}", str(tid)).replace("{g}", str((tid - 1) // max(1, id_max // 10)))
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        lat[k].append(time.perf_counter() - t0)
        if resp.status != 200:
            errors[k] += 1
t0 = time.perf_counter()
ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
elapsed = time.perf_counter() - t0
print(json.dumps({"elapsed": elapsed, "lat": sorted(sum(lat, [])), "errors": sum(errors)}))
"""


def fill(path: str, n: int) -> None:
    from taskmgr import TaskManager

    mgr = TaskManager(path, synchronous="OFF")
    have = len(mgr.list(limit=1))
    if have:
        mgr.shutdown()
        return
    mgr.register("noop", lambda ctx: None)
    t0 = time.perf_counter()
    per_graph = n // 10
    for g in range(10):
        for start in range(0, per_graph, 100_000):
            count = min(100_000, per_graph - start)
            mgr.submit_many("noop", [{"i": start + i} for i in range(count)], graph=f"graph{g}")
    T = mgr._store.Task  # benchmark set-up only: spread the rows over the terminal statuses
    mgr._store.db.execute_sql(
        f"UPDATE {T._meta.table_name} SET status = CASE id % 3 WHEN 0 THEN 'success' "
        "WHEN 1 THEN 'failed' ELSE 'cancelled' END, result = '0'"
    )
    mgr.shutdown()
    print(f"filled {n} tasks in {time.perf_counter() - t0:.1f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=4000, help="requests per endpoint")
    p.add_argument("--threads", type=int, default=4, help="concurrent keep-alive connections of the load generator")
    p.add_argument("--db", help="database file to fill (or reuse); default: a temporary file")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="taskmgr-bench-")
    db = args.db or os.path.join(tmp, "tasks.db")
    fill(db, args.tasks)
    server = subprocess.Popen([sys.executable, "-m", "taskmgr", "serve", "--db", db, "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        banner = server.stdout.readline()
        host, port = banner.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        print(f"server: {banner.strip()}")
        print(f"{args.tasks} tasks stored, {args.requests} requests per endpoint, {args.threads} connections")
        for label, path in [
            ("GET one task", "/graphspaces/DEFAULT/graphs/graph{g}/tasks/{id}"),
            ("GET list of 100 (status=success)", "/graphspaces/DEFAULT/graphs/graph{g}/tasks?status=success&limit=100"),
            ("GET list of 100, no filter", "/graphspaces/DEFAULT/graphs/graph{g}/tasks?limit=100"),
        ]:
            out = subprocess.run(
                [sys.executable, "-c", LOADGEN, host, port, path, str(args.requests), str(args.threads),
                 str(args.tasks)], capture_output=True, text=True, check=True,
            )
            r = json.loads(out.stdout)
            lat = r["lat"]
            p50, p99 = (lat[min(len(lat) - 1, int(f * len(lat)))] * 1e3 for f in (0.5, 0.99))
            print(f"{label:36s} {len(lat) / r['elapsed']:7.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                  f"mean {statistics.mean(lat) * 1e3:6.2f} ms  non-200: {r['errors']}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
