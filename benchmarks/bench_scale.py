"""Scale: reads over a large store, idle memory, and a restart over many interrupted tasks.

Run ``python benchmarks/bench_scale.py`` (``--help`` for the knobs). Prints:

* over ``--tasks`` records (1,000,000 by default) across 10 graphs and all
  twelve statuses: p50/p99 of ``list(status=..., limit=100)`` with and
  without a graph, of lists that name the graph without its graphspace or
  the graphspace alone, of ``get(id)``, and the time to reach the last page
  by page tokens. With ``--graphspaces K`` the 10 graphs are spread over K
  graphspaces under 10 / K names, each name in every graphspace (so a graph
  named alone is K graphs, and a graphspace holds 10 / K): the lists that
  merge across graphspaces;
* the resident memory of an idle manager over that store, measured in a
  child process that opens it and lists;
* the time ``start()`` takes over ``--interrupted`` tasks (100,000) left
  RUNNING by a node that died, and until all of them are SUCCESS.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

from taskmgr import TaskManager, TaskStatus

STATUSES = [s.value for s in TaskStatus]


def _pairs(graphspaces: int) -> list[tuple[str, str]]:
    """The 10 (graphspace, graph) pairs of the store: 10 graphs of DEFAULT, or spread over
    ``graphspaces`` graphspaces, every graph name in each of them."""
    if graphspaces == 1:
        return [("DEFAULT", f"graph{g}") for g in range(10)]
    return [(f"space{g % graphspaces}", f"graph{g // graphspaces}") for g in range(10)]


def _fill(path: str, n: int, status_sql: str, graphspaces: int = 1) -> None:
    mgr = TaskManager(path, synchronous="OFF")
    mgr.register("noop", lambda ctx: None)
    per_graph = n // 10
    for graphspace, graph in _pairs(graphspaces):
        for start in range(0, per_graph, 100_000):
            count = min(100_000, per_graph - start)
            mgr.submit_many("noop", [{"i": start + i} for i in range(count)], graph=graph, graphspace=graphspace)
    table = mgr._store.Task._meta.table_name  # set-up only: put the rows where the benchmark needs them
    mgr._store.db.execute_sql(f"UPDATE {table} SET {status_sql}")
    mgr.shutdown()


def _percentiles(samples: list[float]) -> str:
    s = sorted(samples)
    return f"p50 {s[len(s) // 2] * 1e3:7.3f} ms  p99 {s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3:7.3f} ms"


def reads(path: str, n: int, samples: int, graphspaces: int = 1) -> None:
    mgr = TaskManager(path)
    rnd = random.Random(1)
    pairs = _pairs(graphspaces)
    names = sorted({g for _, g in pairs})
    spaces = sorted({gs for gs, _ in pairs})
    for label, kwargs in [
        ("list(status, limit=100)", lambda: {"status": rnd.choice(STATUSES), "limit": 100}),
        ("list(graph, status, limit=100)",
         lambda: dict(zip(("graphspace", "graph"), rnd.choice(pairs)), status=rnd.choice(STATUSES), limit=100)),
        ("list(graph, limit=100)", lambda: dict(zip(("graphspace", "graph"), rnd.choice(pairs)), limit=100)),
        # an operator's `taskmgr list --graph g`: the graph named without its graphspace
        ("list(graph only, limit=100)", lambda: {"graph": rnd.choice(names), "limit": 100}),
        ("list(graph only, status, limit=100)",
         lambda: {"graph": rnd.choice(names), "status": rnd.choice(STATUSES), "limit": 100}),
        ("list(graphspace only, limit=100)", lambda: {"graphspace": rnd.choice(spaces), "limit": 100}),
    ]:
        times = []
        for _ in range(samples):
            args = kwargs()
            t0 = time.perf_counter()
            mgr.list(**args)
            times.append(time.perf_counter() - t0)
        print(f"{label:38s} {_percentiles(times)}")
    times = []
    for _ in range(samples * 10):
        tid = rnd.randint(1, n)
        t0 = time.perf_counter()
        mgr.get(tid)
        times.append(time.perf_counter() - t0)
    print(f"{'get(id)':38s} {_percentiles(times)}")
    t0 = time.perf_counter()
    token, pages = "", 0
    graphspace, graph = pairs[-1]
    while token is not None:
        token = mgr.list(graph=graph, graphspace=graphspace, status="success", limit=1000, page=token).next_page
        pages += 1
    print(f"{'last page by tokens (' + graph + ', success)':38s} {time.perf_counter() - t0:7.3f} s over {pages} "
          "pages of 1000")
    mgr.shutdown()


_RSS = """
import resource, sys
from taskmgr import TaskManager
m = TaskManager(sys.argv[1])
m.list(limit=100); m.get(1)
for line in open("/proc/self/status"):
    if line.startswith("VmRSS"):
        print(int(line.split()[1]) // 1024)
"""


def idle_memory(path: str) -> None:
    out = subprocess.run([sys.executable, "-c", _RSS, path], capture_output=True, text=True, check=True).stdout
    print(f"{'idle manager resident memory':38s} {out.strip()} MB")


def restart(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "restart.db")
        _fill(path, n, "status = 'running', owner = 'gone-host:1:dead', ran = 1")
        mgr = TaskManager(path, workers=4)
        mgr.register("noop", lambda ctx: None)
        t0 = time.perf_counter()
        mgr.start()
        started = time.perf_counter() - t0
        for tid in range(1, n + 1):
            assert mgr.wait(tid, 600).status is TaskStatus.SUCCESS
        done = time.perf_counter() - t0
        print(f"{'start() over interrupted tasks':38s} {started:7.2f} s for {n} tasks left RUNNING "
              f"(all of them SUCCESS {done:.1f} s after start() began)")
        mgr.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--interrupted", type=int, default=100_000)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--graphspaces", type=int, default=1, choices=(1, 2, 5, 10),
                   help="graphspaces the 10 graphs are spread over (see above)")
    p.add_argument("--db", help="the large store to fill (or reuse, made with the same --graphspaces); "
                   "default: a temporary file")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="taskmgr-scale-")
    path = args.db or os.path.join(tmp, "scale.db")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        _fill(path, args.tasks, "status = CASE id % 12 " + " ".join(
            f"WHEN {i} THEN '{s}'" for i, s in enumerate(STATUSES)) + " END, owner = 'gone-host:1:dead'",
              args.graphspaces)
        print(f"filled {args.tasks} tasks in {time.perf_counter() - t0:.1f} s")
    print(f"python {sys.version.split()[0]}, {args.tasks} records in {args.graphspaces} graphspace(s), "
          f"{args.samples} samples per read figure")
    reads(path, args.tasks, args.samples, args.graphspaces)
    idle_memory(path)
    restart(args.interrupted)


if __name__ == "__main__":
    main()
