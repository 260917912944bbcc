"""A node in a process of its own, for the tests of the node model (tests/test_node_processes.py).

``python nodechild.py DB RUNLOG TYPES NODE_TIMEOUT SKEW SUBMIT``

* ``TYPES``: comma-separated task types to register (``-`` for none); every type runs the same
  callable: it appends ``<task id> <pid>`` to ``RUNLOG`` as it starts, then waits (cancellable)
  until the file ``RUNLOG.release`` exists, and returns its task id;
* ``NODE_TIMEOUT``: this node's lease, seconds;
* ``SKEW``: seconds added to this node's clock (a clock that disagrees with the others');
* ``SUBMIT``: ``type:count`` tasks this node submits once started (``-`` for none).

Prints ``ready <node name> <pid>`` and then the submitted ids on one line, and runs until its
standard input closes or it is killed.
"""

from __future__ import annotations

import os
import sys
import time

from taskmgr import TaskContext, TaskManager


def main() -> None:
    db, runlog, types, node_timeout, skew, submit = sys.argv[1:7]
    offset = float(skew)
    mgr = TaskManager(db, workers=4, poll_interval=0.05, node_timeout=float(node_timeout),
                      clock=lambda: time.time() + offset)

    def gated(ctx: TaskContext) -> int:
        with open(runlog, "a") as f:
            f.write(f"{ctx.task_id} {os.getpid()}\n")
        while not os.path.exists(runlog + ".release"):
            ctx.sleep(0.02)
        return ctx.task_id

    for name in ([] if types == "-" else types.split(",")):
        mgr.register(name, gated)
    mgr.start()
    print("ready", mgr.node, os.getpid(), flush=True)
    ids: list[int] = []
    if submit != "-":
        task_type, count = submit.split(":")
        ids = mgr.submit_many(task_type, [None] * int(count))
    print(" ".join(map(str, ids)), flush=True)
    sys.stdin.read()  # until the test closes it
    mgr.shutdown()


if __name__ == "__main__":
    main()
