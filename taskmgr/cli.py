"""The ``taskmgr`` command line: look at and control the tasks in a database file.

``list``, ``show``, ``cancel`` and ``delete`` open the database as an *idle*
manager (they run nothing, and never create a database that is not there).
``demo`` runs a few example tasks on an embedded database and shows them live.
Tables are for people; ``--json`` prints the contract's JSON objects for
scripts. Errors go to stderr with exit status 1 (2 for a bad command line).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from . import __version__
from .context import TaskContext
from .errors import TaskManagerError
from .manager import TaskManager
from .status import TaskStatus
from .task import Task

__all__ = ["main", "format_table"]

DEFAULT_DB = "taskmgr.db"
DEMO_DB = "taskmgr-demo.db"


def _when(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _clip(text: str | None, width: int) -> str:
    text = "" if text is None else " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def format_table(tasks: Sequence[Task]) -> str:
    """A plain-text table of tasks, one line each, for people."""
    header = ("ID", "TYPE", "STATUS", "PROGRESS", "RETRIES", "UPDATED", "NAME", "RESULT")
    rows = [
        (
            str(t.id),
            _clip(t.type, 16),
            t.status.name,
            str(t.progress),
            str(t.retries),
            _when(t.updated),
            _clip(t.name, 24),
            _clip(t.result, 40),
        )
        for t in tasks
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = {0, 3, 4}
    lines = []
    for row in (header, *rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _open(path: str) -> TaskManager:
    if not os.path.exists(path):
        raise TaskManagerError(
            f"no task database at {path!r}; pass --db with the file your application uses"
        )
    return TaskManager(path)


def _cmd_list(args: argparse.Namespace, out: IO[str]) -> None:
    mgr = _open(args.db)
    try:
        tasks = mgr.list(status=args.status, limit=args.limit, graph=args.graph, graphspace=args.graphspace)
    finally:
        mgr.shutdown()
    if args.json:
        json.dump({"tasks": [t.to_dict() for t in tasks]}, out, ensure_ascii=False)
        out.write("\n")
    elif tasks:
        out.write(format_table(tasks) + "\n")
    else:
        out.write("no tasks\n")


def _cmd_show(args: argparse.Namespace, out: IO[str]) -> None:
    mgr = _open(args.db)
    try:
        task = mgr.get(args.id)
        history = mgr.history(args.id)
    finally:
        mgr.shutdown()
    if args.json:
        moves = [
            {"from": None if h.from_status is None else str(h.from_status), "to": str(h.to_status), "at": h.at}
            for h in history
        ]
        json.dump({"task": task.to_dict(), "history": moves}, out, ensure_ascii=False)
        out.write("\n")
        return
    fields = [
        ("id", task.id),
        ("type", task.type),
        ("name", task.name),
        ("status", task.status.name),
        ("progress", task.progress),
        ("retries", task.retries),
        ("graph", f"{task.graphspace}/{task.graph}"),
        ("created", _when(task.created)),
        ("updated", _when(task.updated)),
        ("callable", task.callable),
        ("input", task.input),
        ("result", task.result),
    ]
    for key, value in fields:
        out.write(f"{key:>9}: {'' if value is None else value}\n")
    if history:
        out.write("  history:\n")
        for h in history:
            frm = "" if h.from_status is None else str(h.from_status).upper()
            out.write(f"           {_when(h.at)}  {frm:>10} -> {str(h.to_status).upper()}\n")


def _cmd_cancel(args: argparse.Namespace, out: IO[str]) -> None:
    mgr = _open(args.db)
    try:
        mgr.cancel(args.id)
        status = mgr.get(args.id).status
    finally:
        mgr.shutdown()
    if args.json:
        out.write(json.dumps({"cancelled": True}) + "\n")
    elif status is TaskStatus.CANCELLING:
        out.write(f"task {args.id} is CANCELLING: its callable has been asked to stop\n")
    else:
        out.write(f"task {args.id} is {status.name}\n")


def _cmd_delete(args: argparse.Namespace, out: IO[str]) -> None:
    mgr = _open(args.db)
    try:
        was = mgr.delete(args.id, force=args.force)
    finally:
        mgr.shutdown()
    if args.json:
        out.write(json.dumps({"deleted": args.id, "status": was.value}) + "\n")
    else:
        out.write(f"deleted the record of task {args.id} (it was {was.name})\n")


# -------------------------------------------------------------------- demo
def _demo_types(mgr: TaskManager) -> None:
    @mgr.task("count")
    def count(ctx: TaskContext) -> int:
        """Counts to input['to'], a step every input['pause'] seconds; stops when cancelled."""
        for i in range(1, ctx.input["to"] + 1):
            ctx.sleep(ctx.input["pause"])
            ctx.progress = i
        return ctx.input["to"]

    @mgr.task("flaky", max_retries=2, retry_delay=0.3)
    def flaky(ctx: TaskContext) -> str:
        """Fails on its first run, succeeds on the retry."""
        ctx.sleep(0.3)
        if ctx.retries == 0:
            raise ConnectionError("the backend was not ready")
        return "worked on retry"

    @mgr.task("fail")
    def fail(ctx: TaskContext) -> None:
        ctx.sleep(0.5)
        raise ValueError("bad input")


def _cmd_demo(args: argparse.Namespace, out: IO[str]) -> None:
    path = args.db
    # the demo's failing task fails on purpose: keep its traceback off the screen
    logging.getLogger("taskmgr").setLevel(logging.ERROR)
    if not args.json:
        out.write(f"taskmgr {__version__} demo: tasks run in the background on {path!r}\n\n")
    mgr = TaskManager(path, workers=4, poll_interval=0.1)
    _demo_types(mgr)
    live = out.isatty() and not args.json
    with mgr:
        ids = [
            mgr.submit("count", {"to": 20, "pause": 0.1}, name="count to 20"),
            mgr.submit("count", {"to": 100, "pause": 0.1}, name="count to 100 (will be cancelled)"),
            mgr.submit("flaky", name="flaky: fails once, then retries"),
            mgr.submit("fail", name="fails with an error"),
            mgr.submit("count", {"to": 5, "pause": 0.1}, name="starts 1 s later", delay=1.0),
        ]
        cancelled = False
        drawn = 0
        seen: dict[int, tuple[Any, ...]] = {}
        started = time.monotonic()
        while True:
            tasks = mgr.list(ids=ids)
            if not cancelled and mgr.get(ids[1]).progress >= 10:
                mgr.cancel(ids[1])
                cancelled = True
                if not live and not args.json:
                    out.write(f"-- cancel requested for task {ids[1]}\n")
            if live:
                if drawn:
                    out.write(f"\x1b[{drawn}F")
                for t in tasks:
                    out.write(f"\x1b[2K{t.id:>4}  {t.status.name:<10} {t.progress:>4}  {t.name}\n")
                drawn = len(tasks)
                out.flush()
            elif not args.json:
                for t in tasks:
                    key = (t.status, t.progress // 10)
                    if seen.get(t.id) != key:
                        seen[t.id] = key
                        out.write(f"{time.monotonic() - started:5.1f}s  task {t.id} {t.status.name} "
                                  f"progress {t.progress}  ({t.name})\n")
            if all(t.terminal for t in tasks) or time.monotonic() - started > 30:
                break
            time.sleep(0.1)
        final = mgr.list(ids=ids)
    if args.json:
        json.dump({"tasks": [t.to_dict() for t in final]}, out, ensure_ascii=False)
        out.write("\n")
        return
    out.write("\nOutcome:\n" + format_table(final) + "\n\n")
    out.write(f"Look again with:  taskmgr list --db {path}\n")
    out.write(f"One task's story: taskmgr show {ids[2]} --db {path}\n")


# --------------------------------------------------------------------- main
def _task_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"task id must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"task id must be a positive integer, got {text!r}")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1:
        raise argparse.ArgumentTypeError(f"limit must be -1 (no limit) or a non-negative integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskmgr", description="Look at and control the tasks of a taskmgr database.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, db: str = DEFAULT_DB) -> None:
        p.add_argument("--db", default=db, metavar="PATH", help=f"the task database file (default: {db})")
        p.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")

    p = sub.add_parser("list", help="list tasks, oldest first")
    common(p)
    p.add_argument("--status", help="only tasks in this status (any case), e.g. running")
    p.add_argument("--graph", help="only tasks of this graph")
    p.add_argument("--graphspace", help="only tasks of this graphspace")
    p.add_argument("--limit", type=_limit, default=100, help="at most this many (default 100; -1 for all)")
    p.set_defaults(run=_cmd_list)

    p = sub.add_parser("show", help="one task in full, with its history")
    common(p)
    p.add_argument("id", type=_task_id)
    p.set_defaults(run=_cmd_show)

    p = sub.add_parser("cancel", help="cancel a task (a running one is asked to stop)")
    common(p)
    p.add_argument("id", type=_task_id)
    p.set_defaults(run=_cmd_cancel)

    p = sub.add_parser("delete", help="delete a task's record")
    common(p)
    p.add_argument("id", type=_task_id)
    p.add_argument("--force", action="store_true", help="also the record of an unfinished task")
    p.set_defaults(run=_cmd_delete)

    p = sub.add_parser("demo", help="run example tasks and watch them")
    common(p, DEMO_DB)
    p.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    out = sys.stdout if out is None else out
    try:
        args.run(args, out)
    except TaskManagerError as exc:
        print(f"taskmgr: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("taskmgr: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
