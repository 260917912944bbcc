"""Task types and a child-process entry point for the tests that kill or cross processes.

Run as ``python childjobs.py MODE DB [ARGS...]``:

* ``serve DB N`` — start a manager, submit N ``steps`` tasks, print their ids, and run until killed;
* ``poison DB`` — start a manager (restoring what a dead one left) and submit one ``poison``
  task if the store has none; the task SIGKILLs its own process;
* ``cancel DB ID`` — cancel task ID from this (idle) process and exit.
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


def main(argv: list[str]) -> None:
    mode, db = argv[0], argv[1]
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
    time.sleep(120)
    mgr.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
