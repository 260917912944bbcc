"""Task types and a child-process entry point for the tests that kill or cross processes.

Run as ``python childjobs.py MODE DB [ARGS...]``:

* ``serve DB N`` — start a manager, submit N ``steps`` tasks, print their ids, and run until killed;
* ``poison DB`` — start a manager (restoring what a dead one left) and submit one ``poison``
  task if the store has none; the task SIGKILLs its own process;
* ``cancel DB ID`` — cancel task ID from this (idle) process and exit;
* ``exit DB`` — start a manager, submit five ``steps`` tasks, and end the script (no shutdown)
  once two of them run;
* ``fork DB`` — start a manager, submit five ``steps`` tasks, fork a child that exits at once,
  print the ids and run until killed;
* ``actor DB SECONDS SEED`` — race on the store's tasks from three threads (see :func:`actor`);
* ``node DB RUNS_LOG`` and ``submitter DB SECONDS SEED`` — the two sides of the kill loop.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from taskmgr import TaskContext, TaskManager


def setup(mgr: TaskManager) -> None:
    @mgr.task("steps")
    def steps(ctx: TaskContext) -> int:
        n = ctx.input["n"]
        for i in range(n):
            ctx.progress = i + 1
            ctx.sleep(ctx.input.get("pause", 0.02))
        return n

    @mgr.task("poison")
    def poison(ctx: TaskContext) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @mgr.task("wait_cancel")
    def wait_cancel(ctx: TaskContext) -> str:
        ctx.progress = 1
        ctx.sleep(60)
        return "not cancelled"


def actor(db: str, seconds: float, seed: int, threads: int = 3) -> None:
    """Submit, cancel, delete, suspend and resume tasks at random (also other processes' tasks)
    for ``seconds``; print what was acknowledged and what went wrong, as JSON."""
    import faulthandler
    import json
    import random
    import threading

    from taskmgr import InvalidTransition, TaskNotFound

    faulthandler.dump_traceback_later(seconds + 30, exit=True)  # a hang prints every thread's stack
    mgr = TaskManager(db, workers=2, poll_interval=0.05)

    @mgr.task("quick", max_retries=1, retry_delay=0.01)
    def quick(ctx: TaskContext) -> int:
        ctx.sleep(ctx.input["pause"])
        if ctx.input["fail"] and ctx.retries == 0:
            raise RuntimeError("first run fails")
        return ctx.task_id

    mgr.start()
    acked: list[int] = []
    deleted: list[int] = []
    unexpected: list[str] = []
    ops = [0] * threads
    deadline = time.monotonic() + seconds

    def run(k: int) -> None:
        rnd = random.Random(seed * 100 + k)
        while time.monotonic() < deadline:
            top = max(acked[-1] if acked else 1, 1)
            tid = rnd.randint(1, top + 3)
            roll = rnd.random()
            try:
                if roll < 0.35:
                    acked.append(mgr.submit("quick", {"pause": rnd.choice([0, 0.005, 0.02]),
                                                      "fail": rnd.random() < 0.2}))
                elif roll < 0.5:
                    mgr.cancel(tid)
                elif roll < 0.6:
                    mgr.delete(tid, force=rnd.random() < 0.5)
                    deleted.append(tid)
                elif roll < 0.75:
                    mgr.suspend(tid)
                elif roll < 0.9:
                    mgr.resume(tid)
                else:
                    mgr.list(limit=20)
            except (TaskNotFound, InvalidTransition):
                pass
            except Exception as exc:  # noqa: BLE001 - anything else is a failure of the library
                unexpected.append(repr(exc))
            ops[k] += 1

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    mgr.shutdown(wait=True)
    print(json.dumps({"acked": acked, "deleted": deleted, "ops": sum(ops), "unexpected": unexpected}), flush=True)


def kill_loop_types(mgr: TaskManager, runs_log: str) -> None:
    """The task types of the kill loop; every run's start is appended to ``runs_log``."""

    def note_start(ctx: TaskContext) -> None:
        fd = os.open(runs_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{ctx.task_id} {int(time.time() * 1000)}\n".encode())
        finally:
            os.close(fd)

    @mgr.task("work", max_retries=2, retry_delay=0.01)
    def work(ctx: TaskContext) -> int:
        note_start(ctx)
        for i in range(ctx.input["steps"]):
            ctx.sleep(0.01)
            ctx.progress = i + 1
        if ctx.input["fail"] and ctx.retries == 0:
            raise RuntimeError("first run fails")
        return ctx.input["steps"]


def node(db: str, runs_log: str) -> None:
    """A started manager running the kill loop's tasks until it is killed."""
    mgr = TaskManager(db, workers=2, poll_interval=0.05, max_restores=50)
    kill_loop_types(mgr, runs_log)
    mgr.start()
    print("up", flush=True)
    time.sleep(600)


def submitter(db: str, seconds: float, seed: int) -> None:
    """Submit tasks continuously (as an idle manager) and cancel some; print each acknowledged id."""
    import random

    rnd = random.Random(seed)
    mgr = TaskManager(db)
    kill_loop_types(mgr, os.devnull)
    deadline = time.monotonic() + seconds
    mine: list[int] = []
    while time.monotonic() < deadline:
        tid = mgr.submit("work", {"steps": rnd.choice([1, 3, 10, 30]), "fail": rnd.random() < 0.2})
        print(tid, flush=True)
        mine.append(tid)
        if rnd.random() < 0.1:
            try:
                mgr.cancel(rnd.choice(mine))
            except Exception:  # noqa: BLE001 - already finished: the contract's refusal
                pass
        time.sleep(rnd.random() * 0.02)
    mgr.shutdown()


def main(argv: list[str]) -> None:
    mode, db = argv[0], argv[1]
    if mode == "node":
        node(db, argv[2])
        return
    if mode == "submitter":
        submitter(db, float(argv[2]), int(argv[3]))
        return
    if mode == "actor":
        actor(db, float(argv[2]), int(argv[3]))
        return
    if mode == "cancel":
        mgr = TaskManager(db)
        mgr.cancel(int(argv[2]))
        mgr.shutdown()
        return
    mgr = TaskManager(db, workers=2, poll_interval=0.05, max_restores=2)
    setup(mgr)
    mgr.start()
    if mode == "serve":
        ids = mgr.submit_many("steps", [{"n": 1000, "pause": 0.01}] * int(argv[2]))
        print(" ".join(map(str, ids)), flush=True)
    elif mode == "poison":
        if not mgr.list(limit=1):
            mgr.submit("poison")
    elif mode == "wait_cancel":
        print(mgr.submit("wait_cancel"), flush=True)
    elif mode == "exit":  # two running, three queued, and the script ends without a shutdown
        ids = mgr.submit_many("steps", [{"n": 10, "pause": 0.05}] * 5)
        while sum(t.status.name == "RUNNING" and t.progress > 0 for t in mgr.list()) < 2:
            time.sleep(0.01)
        print(" ".join(map(str, ids)), flush=True)
        return
    elif mode == "fork":  # a child forked from a node ends normally; the node goes on
        ids = mgr.submit_many("steps", [{"n": 20, "pause": 0.05}] * 5)
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # the interpreter's exit path, inherited exit hooks included
        os.waitpid(pid, 0)
        print(" ".join(map(str, ids)), flush=True)
    time.sleep(120)
    mgr.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
