"""The ``taskmgr`` command line: look at, control and serve the tasks in a database file.

``list`` and ``show`` open the database read-only (they never create, migrate
or change anything, work on a read-only file, and refuse a file that is not a
taskmgr database); ``cancel`` and ``delete`` open it as an *idle* manager (they
run nothing, and never create a database that is not there).
``serve`` runs the REST API of :mod:`taskmgr.rest` on waitress (the main job);
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
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from . import __version__, examples
from ._text import printable
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
    text = "" if text is None else printable(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 1] + "\u2026"


# what JSON leaves raw but a terminal acts on: DEL, C1 controls, line separators, bidi overrides
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _dump_json(obj: Any, out: IO[str]) -> None:
    """``obj`` as one line of JSON, with every character a terminal would act on escaped."""
    text = json.dumps(obj, ensure_ascii=False)
    out.write(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")


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
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _open(path: str, readonly: bool = False) -> TaskManager:
    """The manager of the file at ``path``; read-only for the commands that only read (they must
    work on a read-only file and never create or change a schema)."""
    if not os.path.exists(path):
        raise TaskManagerError(
            f"no task database at {path!r}; pass --db with the file your application uses"
        )
    return TaskManager(path, readonly=readonly)


def _cmd_list(args: argparse.Namespace, out: IO[str]) -> None:
    mgr = _open(args.db, readonly=True)
    try:
        tasks = mgr.list(status=args.status, limit=args.limit, graph=args.graph, graphspace=args.graphspace)
    finally:
        mgr.shutdown()
    if args.json:
        _dump_json({"tasks": [t.to_dict() for t in tasks]}, out)
    elif tasks:
        out.write(format_table(tasks) + "\n")
    else:
        out.write("no tasks\n")


def _cmd_show(args: argparse.Namespace, out: IO[str]) -> None:
    mgr = _open(args.db, readonly=True)
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
        _dump_json({"task": task.to_dict(), "history": moves}, out)
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
        out.write(f"{key:>9}: {'' if value is None else printable(str(value))}\n")
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
def _cmd_demo(args: argparse.Namespace, out: IO[str]) -> None:
    path = args.db
    # the demo's failing task fails on purpose: keep its traceback off the screen
    logging.getLogger("taskmgr").setLevel(logging.ERROR)
    if not args.json:
        out.write(f"taskmgr {__version__} demo: tasks run in the background on {path!r}\n\n")
    mgr = TaskManager(path, workers=4, poll_interval=0.1)
    examples.setup(mgr)
    live = out.isatty() and not args.json
    mgr.start()
    interrupted = False
    try:
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
                    out.write(f"\x1b[2K{t.id:>4}  {t.status.name:<10} {t.progress:>4}  {printable(t.name)}\n")
                drawn = len(tasks)
                out.flush()
            elif not args.json:
                for t in tasks:
                    key = (t.status, t.progress // 10)
                    if seen.get(t.id) != key:
                        seen[t.id] = key
                        out.write(f"{time.monotonic() - started:5.1f}s  task {t.id} {t.status.name} "
                                  f"progress {t.progress}  ({printable(t.name)})\n")
            if all(t.terminal for t in tasks) or time.monotonic() - started > 30:
                break
            time.sleep(0.1)
        final = mgr.list(ids=ids)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # on Ctrl-C the callables are asked to stop (ctx.sleep raises TaskInterrupted), not waited for
        mgr.shutdown(wait=True, interrupt=interrupted)
    if args.json:
        _dump_json({"tasks": [t.to_dict() for t in final]}, out)
        return
    out.write("\nOutcome:\n" + format_table(final) + "\n\n")
    out.write(f"Look again with:  taskmgr list --db {path}\n")
    out.write(f"One task's story: taskmgr show {ids[2]} --db {path}\n")


# -------------------------------------------------------------------- serve
AUTH_ENV = "TASKMGR_AUTH"


def _read_auth(path: str | None) -> tuple[str, str] | None:
    """``user:password`` from the first line of the file at ``path`` (UTF-8, a BOM allowed), else
    from $TASKMGR_AUTH, else None. Only the line's end is cut: spaces belong to the password."""
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = f.read(64 * 1024)
        except OSError as exc:
            raise TaskManagerError(f"cannot read the credentials file {path!r}: {exc.strerror}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise TaskManagerError(f"the credentials file {path!r} is not UTF-8 text") from None
        where = f"the credentials file {path!r}"
    else:
        text = os.environ.get(AUTH_ENV, "")
        if not text:
            return None
        where = f"${AUTH_ENV}"
    text = text.split("\n", 1)[0].removesuffix("\r")
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise TaskManagerError(f"{where} must hold 'user:password' on one line")
    if printable(text) != text:
        raise TaskManagerError(f"{where} holds a control character; credentials cannot")
    return user, password


def _load_tasks_module(name: str, manager: TaskManager) -> None:
    import importlib

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise TaskManagerError(f"cannot import the tasks module {name!r}: {exc}") from None
    setup = getattr(module, "setup", None)
    if not callable(setup):
        raise TaskManagerError(f"the tasks module {name!r} has no setup(manager) function to register its task types")
    setup(manager)


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class _Stop(SystemExit):
    """Raised by the first SIGINT or SIGTERM to end waitress's loop (which stops on SystemExit)."""


class _Signals:
    """Counts SIGINT and SIGTERM: the first ends the serving, later ones end the grace."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 1:
            raise _Stop(0)


def _loopback(host: str, port: int) -> bool:
    """Whether every address ``host`` resolves to is a loopback address."""
    import ipaddress

    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise TaskManagerError(f"cannot listen on {host!r}: {why}") from None
    return all(ipaddress.ip_address(str(a[4][0]).split("%")[0]).is_loopback for a in found)


class LogEscape(logging.Filter):
    """Makes every record one log entry that no client can forge: the message with its control
    characters escaped and at most 4,000 characters long, a traceback's lines indented with control
    characters escaped (a line in an error text cannot pass for a log line of its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = printable(record.getMessage(), 4000), None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = "\n".join("    " + printable(line) for line in text.splitlines())
        return True


def _serve_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(LogEscape())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("taskmgr.scheduler").setLevel(logging.WARNING)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # a line per request under load


def _cmd_serve(args: argparse.Namespace, out: IO[str]) -> None:
    try:
        from .rest import body_limit, create_app
        from .server import AccessLog, listening_urls, make_server
    except ImportError as exc:
        raise TaskManagerError(f"taskmgr serve needs the server extra ({exc.name} is missing): "
                               "pip install 'taskmgr[server]'") from None
    auth = _read_auth(args.auth_file)
    loopback = _loopback(args.host, args.port)
    extra = {h.lower() for h in args.allow_host}
    if "*" in extra:
        allowed: set[str] | None = None
    elif loopback or extra:
        allowed = extra | LOOPBACK_NAMES | {args.host.lower()}
    else:
        allowed = None  # listening beyond loopback, the names it is reached by are the operator's
    _serve_logging()
    mgr = TaskManager(args.db, workers=args.workers, busy_timeout=args.busy_timeout)
    if args.examples:
        examples.setup(mgr)
    for name in args.tasks:
        _load_tasks_module(name, mgr)
    lanes = args.write_lanes if args.write_lanes is not None else max(1, args.threads // 2)
    access = AccessLog(sys.stderr)
    app = create_app(mgr, auth=auth, allowed_hosts=allowed, write_lanes=lanes, access_log=access)
    try:
        server = make_server(
            app, host=args.host, port=args.port, threads=args.threads, auth=auth, allowed_hosts=allowed,
            body_limit=body_limit(mgr.max_input_size), input_limit=mgr.max_input_size,
            connection_limit=args.connection_limit, header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
        )
    except (OSError, ValueError) as exc:
        mgr.shutdown()
        why = getattr(exc, "strerror", None) or str(exc)
        raise TaskManagerError(f"cannot listen on {args.host!r} port {args.port}: {why}") from None
    signals = _Signals()
    signal.signal(signal.SIGTERM, signals)
    signal.signal(signal.SIGINT, signals)
    try:
        mgr.start()
        types = ", ".join(f"{n}{'' if t.http else ' (not over HTTP)'}" for n, t in sorted(mgr.task_types.items()))
        out.write(
            f"taskmgr {__version__} serving on {' '.join(listening_urls(server))} "
            f"(database {args.db!r}, {args.workers} workers, auth {'on' if auth else 'off'}, "
            f"task types: {types or 'none'})\n"
        )
        out.flush()
        server.run()  # until the first signal (waitress's loop ends on SystemExit)
    except _Stop:
        pass
    try:
        _stop(server, mgr, signals, args.grace, out, access)
    finally:
        access.close()


def _stop(server: Any, mgr: TaskManager, signals: _Signals, grace: float, out: IO[str], access: Any) -> None:
    """Stop serving; ask running tasks to stop and wait for them ``grace`` seconds at most, or until
    a second signal. Then exit: 0 when they stopped, 1 when some still run (they stay RUNNING in the
    store, owned by this dead node, and the next start runs them again: nothing is lost)."""
    out.write(f"taskmgr: stopping: running tasks are asked to stop and will run again on the next start; "
              f"waiting up to {grace:g} s for them (a second Ctrl-C or SIGTERM stops at once)\n")
    out.flush()
    try:
        server.close()
    except Exception:  # noqa: BLE001 - closing the sockets of a server that is going away
        pass
    done = threading.Event()

    def shut() -> None:
        try:
            mgr.shutdown(wait=True, interrupt=True)
        finally:
            done.set()

    threading.Thread(target=shut, name="taskmgr-stop", daemon=True).start()
    deadline = time.monotonic() + grace
    while not done.wait(0.05):
        if signals.count >= 2 or time.monotonic() >= deadline:
            why = "a second signal came" if signals.count >= 2 else f"the {grace:g} s grace ended"
            access.flush()
            print(f"taskmgr: error: {why} while tasks still ran; stopped without them: they stay RUNNING "
                  "and run again on the next start", file=sys.stderr)
            for stream in (out, sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            logging.shutdown()
            os._exit(1)  # a callable that ignores its interrupt would hold the interpreter's exit
    out.write("taskmgr: stopped\n")
    out.flush()


# --------------------------------------------------------------------- main
_STRICT_INT = re.compile(r"-?[0-9]{1,19}", re.ASCII)


def _int_between(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` in ASCII digits (no space, sign but
    ``-``, ``_`` or other scripts' digits, as the REST API), else ``what, got '...'``."""

    def parse(text: str) -> int:
        value = int(text) if _STRICT_INT.fullmatch(text) else low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return value

    return parse


_task_id = _int_between(1, 2**63 - 1, "task id must be a positive integer")
_limit = _int_between(-1, 2**63 - 1, "limit must be -1 (no limit) or a non-negative integer")
_positive = _int_between(1, 100_000, "must be a positive integer")
_connections = _int_between(1, 1_000_000, "must be a positive integer")


def _seconds(text: str) -> float:
    """An argparse type: a positive number of seconds, at most a day."""
    try:
        value = float(text) if text.isascii() else -1.0
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0 and at most 86400, got {text!r}")
    return value
_port = _int_between(0, 65535, "port must be 0 to 65535")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskmgr",
                                     description="Look at, control and serve the tasks of a taskmgr database.")
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

    p = sub.add_parser("serve", help="serve the REST API (needs the server extra)")
    p.add_argument("--db", default=DEFAULT_DB, metavar="PATH", help=f"the task database file (default: {DEFAULT_DB})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--workers", type=_positive, default=4, help="threads running tasks (default 4)")
    p.add_argument("--threads", type=_positive, default=8, help="threads answering requests (default 8)")
    p.add_argument("--tasks", action="append", default=[], metavar="MODULE",
                   help="import MODULE (from the current directory too) and call its setup(manager); repeatable")
    p.add_argument("--examples", action="store_true", help="register the example task types (count, flaky, fail)")
    p.add_argument("--auth-file", metavar="PATH",
                   help=f"require HTTP Basic auth with the 'user:password' in this file (or set ${AUTH_ENV})")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header names NAME (while on loopback only loopback "
                        "names are answered); '*' for any; repeatable")
    p.add_argument("--busy-timeout", type=_seconds, default=5.0, metavar="SECONDS",
                   help="how long a write waits for another connection's lock on the database (default 5)")
    p.add_argument("--write-lanes", type=_positive, metavar="N",
                   help="requests that may wait on the database's write lock at once; more are answered 503 "
                        "(default: half of --threads)")
    p.add_argument("--connection-limit", type=_connections, default=512, metavar="N",
                   help="open connections at most (default 512)")
    p.add_argument("--header-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="a request's headers must arrive within this long of its first byte (default 10)")
    p.add_argument("--idle-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="close a connection idle this long, or whose client reads nothing of its answer "
                        "this long (default 30)")
    p.add_argument("--grace", type=_seconds, default=10.0, metavar="SECONDS",
                   help="on SIGINT or SIGTERM, how long to wait for running tasks to stop (default 10)")
    p.set_defaults(run=_cmd_serve)

    p = sub.add_parser("demo", help="run example tasks and watch them")
    common(p, DEMO_DB)
    p.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if out is None:
        out = sys.stdout
        try:  # a terminal or pipe that is not UTF-8 gets escapes, not a UnicodeEncodeError
            out.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            pass
    try:
        args.run(args, out)
        out.flush()
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, and keep the interpreter's own flush quiet too
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except TaskManagerError as exc:
        print(f"taskmgr: error: {printable(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("taskmgr: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
