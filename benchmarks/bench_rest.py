"""The REST server under wrk: ``taskmgr serve`` beside a bare Falcon app on waitress, in one run.

Run ``python benchmarks/bench_rest.py`` (needs the server extra and ``wrk``,
from Debian's packages: ``apt-get install wrk``; ``--help`` for the knobs).
It fills a database (1,000,000 tasks across 10 graphs and the terminal
statuses by default; ``--db`` reuses a file between runs), starts ``taskmgr
serve`` on it and, as the baseline, a bare Falcon app on waitress (the same
thread count) that answers the same paths with a fixed body: one task's
object, or a list of 100 of them. Each endpoint is measured on both servers
in alternating rounds (``--rounds`` of ``--seconds`` each) by ``wrk`` over
keep-alive connections, so that a drift of the shared machine's speed falls
on both; the figures are the medians of the rounds, and the median of each
round's ratio (steadier while the machine's speed drifts). It prints figures
and never asserts.
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

# the baseline: what waitress and Falcon cost with nothing of taskmgr behind them
BARE_APP = r"""
import json, sys
import falcon, waitress
task = {"task_name": "noop", "task_progress": 0, "task_create": 1796691929404, "task_status": "success",
        "task_update": 1796691929404, "task_result": "0", "task_retries": 0, "id": 300001, "task_type": "noop",
        "task_callable": "bench_rest.fill.<locals>.<lambda>", "task_input": "{\"i\":0}"}
one = json.dumps(task).encode()
many = json.dumps({"tasks": [dict(task, id=task["id"] + i) for i in range(100)]}).encode()

class One:
    def on_get(self, req, resp, graphspace, graph, task_id):
        resp.content_type = falcon.MEDIA_JSON
        resp.data = one

class Many:
    def on_get(self, req, resp, graphspace, graph):
        resp.content_type = falcon.MEDIA_JSON
        resp.data = many

app = falcon.App()
app.add_route("/graphspaces/{graphspace}/graphs/{graph}/tasks/{task_id}", One())
app.add_route("/graphspaces/{graphspace}/graphs/{graph}/tasks", Many())
server = waitress.create_server(app, host="127.0.0.1", port=0, threads=int(sys.argv[1]))
print(f"bare Falcon app serving on http://127.0.0.1:{server.effective_port}/", flush=True)
server.run()
"""

# wrk's script: a random id (and its graph) per request, and the figures as one JSON line
WRK_SCRIPT = r"""
local n = tonumber(os.getenv("BENCH_TASKS"))
local template = os.getenv("BENCH_PATH")
local per_graph = math.max(1, math.floor(n / 10))
local seed = 1
setup = function(thread) thread:set("seed", seed); seed = seed + 1 end
init = function(args) math.randomseed(seed * 7919) end
request = function()
  local id = math.random(1, n)
  local g = math.floor((id - 1) / per_graph)
  local path = template:gsub("{id}", tostring(id)):gsub("{g}", tostring(g))
  return wrk.format("GET", path)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\nRESULT {"requests": %d, "seconds": %f, "socket_errors": %d, "non2xx": %d, ' ..
    '"p50_ms": %f, "p99_ms": %f}\n', summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3))
end
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


def _start(argv: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    banner = proc.stdout.readline()
    if "serving on" not in banner:
        proc.kill()
        raise SystemExit(f"the server did not start: {banner!r}")
    return proc, banner.split("serving on ", 1)[1].split()[0].rstrip("/")


def _wrk(url: str, path: str, args: argparse.Namespace, script: str) -> dict:
    env = {**os.environ, "BENCH_TASKS": str(args.tasks), "BENCH_PATH": path}
    out = subprocess.run(
        ["wrk", "-t", str(args.wrk_threads), "-c", str(args.connections), "-d", f"{args.seconds:g}s",
         "--timeout", "10s", "-s", script, url],
        capture_output=True, text=True, env=env, check=True,
    ).stdout
    result = json.loads(out.split("RESULT ", 1)[1])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--db", help="database file to fill (or reuse); default: a temporary file")
    p.add_argument("--seconds", type=float, default=3, help="length of one wrk round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per endpoint and server (default 3)")
    p.add_argument("--connections", type=int, default=8, help="wrk's keep-alive connections (default 8)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads (default 1)")
    p.add_argument("--threads", type=int, default=8, help="request threads of both servers (default 8)")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="taskmgr-bench-")
    db = args.db or os.path.join(tmp, "tasks.db")
    fill(db, args.tasks)
    script = os.path.join(tmp, "bench.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    ours, our_url = _start([sys.executable, "-m", "taskmgr", "serve", "--db", db, "--port", "0",
                            "--threads", str(args.threads)])
    bare, bare_url = _start([sys.executable, "-c", BARE_APP, str(args.threads)])
    try:
        print(f"{args.tasks} tasks stored; wrk -t{args.wrk_threads} -c{args.connections}, {args.rounds} rounds "
              f"of {args.seconds:g} s per endpoint and server, alternating; {args.threads} request threads each")
        rows = [
            ("GET one task", "/graphspaces/DEFAULT/graphs/graph{g}/tasks/{id}"),
            ("GET list of 100, no filter", "/graphspaces/DEFAULT/graphs/graph{g}/tasks?limit=100"),
            ("GET list of 100, status=success", "/graphspaces/DEFAULT/graphs/graph{g}/tasks?status=success&limit=100"),
        ]
        print(f"{'endpoint':34s} {'server':8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'non-2xx':>8s}")
        for label, path in rows:
            runs: dict[str, list[dict]] = {"taskmgr": [], "bare": []}
            for _ in range(args.rounds):
                runs["taskmgr"].append(_wrk(our_url, path, args, script))
                runs["bare"].append(_wrk(bare_url, path, args, script))
            medians = {}
            for name, results in runs.items():
                medians[name] = statistics.median(r["rps"] for r in results)
                p50 = statistics.median(r["p50_ms"] for r in results)
                p99 = statistics.median(r["p99_ms"] for r in results)
                bad = sum(r["non2xx"] + r["socket_errors"] for r in results)
                print(f"{label:34s} {name:8s} {medians[name]:8.0f} {p50:8.2f} {p99:8.2f} {bad:8d}")
            paired = statistics.median(t["rps"] / b["rps"] for t, b in zip(runs["taskmgr"], runs["bare"]))
            print(f"{'':34s} {'ratio':8s} {medians['taskmgr'] / medians['bare']:8.0%}  (taskmgr / bare app; "
                  f"median of the rounds' ratios {paired:.0%})")
    finally:
        for proc in (ours, bare):
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
