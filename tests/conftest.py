"""Shared fixtures: managers on temporary files, and gates that let tests steer callables by events."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from taskmgr import TaskContext, TaskManager

WAIT = 10.0  # every cross-thread wait in the tests is bounded by this


def sql(db_path: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one raw statement on the SQLite file, as an operator's sqlite3 shell (or a damaged disk)
    would: its own connection, committed at once. Returns the rows it yields."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=WAIT, isolation_level=None)) as conn:
        return conn.execute(statement, tuple(params)).fetchall()


def registered_nodes(db_path: str) -> list[str]:
    """The nodes registered in the file's node table (raw SQL: no manager has a public view of it)."""
    return [name for (name,) in sql(db_path, "SELECT node FROM taskmgr_node ORDER BY node")]


def task_column(db_path: str, task_id: int, column: str) -> Any:
    """One stored column of one task (raw SQL: for the bookkeeping columns a Task does not carry,
    such as ``owner`` and ``restores``)."""
    assert column.isidentifier(), column
    (value,) = sql(db_path, f"SELECT {column} FROM taskmgr_task WHERE id = ?", (task_id,))[0]
    return value


class _Events(dict):
    """An event per task id, made by whichever thread asks for it first.

    Not a ``defaultdict(threading.Event)``: its ``__missing__`` runs the
    factory (Python code, so the GIL may pass) before it stores the result,
    and a worker setting an id's event as the test starts waiting on it could
    each make one; the test then waited on an event no one would set ("task 1
    did not start" with both gate tasks running, about one run in four of
    tests/test_manager.py on a 2-core machine).
    """

    def __missing__(self, task_id: int) -> threading.Event:
        return self.setdefault(task_id, threading.Event())  # one C call: the first stored wins


class Gates:
    """Events shared between a test and the callables it runs.

    ``started[task_id]`` is set when that task's callable begins;
    ``release`` lets the ``gate`` callables return.
    """

    def __init__(self) -> None:
        self.started: dict[int, threading.Event] = _Events()
        self.release = threading.Event()
        self.ran: list[int] = []

    def wait_started(self, task_id: int) -> None:
        assert self.started[task_id].wait(WAIT), f"task {task_id} did not start within {WAIT} s"


def register_test_types(mgr: TaskManager, gates: Gates) -> None:
    """The task types most tests use."""

    @mgr.task("echo")
    def echo(ctx: TaskContext) -> object:
        gates.ran.append(ctx.task_id)
        return ctx.input

    @mgr.task("fail")
    def fail(ctx: TaskContext) -> None:
        gates.ran.append(ctx.task_id)
        raise ValueError("bad input")

    @mgr.task("sleepy")
    def sleepy(ctx: TaskContext) -> str:
        """Cooperates: sleeps in ctx.sleep until cancelled (or 30 s)."""
        gates.ran.append(ctx.task_id)
        ctx.progress = 1
        gates.started[ctx.task_id].set()
        ctx.sleep(30)
        return "slept"

    @mgr.task("gate")
    def gate(ctx: TaskContext) -> str:
        """Never looks at cancellation: returns when the test releases it."""
        gates.ran.append(ctx.task_id)
        gates.started[ctx.task_id].set()
        assert gates.release.wait(WAIT)
        return "released"


@pytest.fixture
def gates() -> Gates:
    return Gates()


@pytest.fixture
def db_path(tmp_path) -> str:
    return str(tmp_path / "tasks.db")


@pytest.fixture
def mgr(db_path: str, gates: Gates) -> Iterator[TaskManager]:
    """A started pool manager with two workers and a fast poll."""
    m = TaskManager(db_path, workers=2, poll_interval=0.05)
    register_test_types(m, gates)
    m.start()
    yield m
    gates.release.set()
    m.shutdown(wait=True)


@pytest.fixture
def inline(db_path: str, gates: Gates) -> Iterator[TaskManager]:
    """A started inline manager: submit runs the task before returning."""
    m = TaskManager(db_path, executor="inline")
    register_test_types(m, gates)
    m.start()
    yield m
    m.shutdown()
