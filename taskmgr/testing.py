"""Help for hosts testing their own task functions, including under hypothesis.

Three executors cover the usual needs:

* ``TaskManager(path, executor="inline")``: every task runs on the submitting
  thread before :meth:`~taskmgr.TaskManager.submit` returns. Delayed starts and
  retry backoff wait for :meth:`~taskmgr.TaskManager.run_due`, which compares
  against the manager's clock: pass a :class:`FakeClock` and advance it.
* :class:`StepExecutor`: nothing runs until the test says so, one job at a
  time, each on a thread of its own. A test can hold a task in QUEUED, start
  it, cancel it while RUNNING, and see every status on the way.
* :func:`inline_manager`: an inline manager on a temporary file, started, and
  cleaned up afterwards.

:func:`check_history` checks a manager's recorded transitions against the
table.

The hypothesis strategies (:func:`json_values`, :func:`statuses`,
:func:`status_paths`, :func:`task_type_names`) need the ``hypothesis`` package
(the ``test`` extra); the rest of this module does not.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from .executor import ManualTimer
from .manager import TaskManager
from .status import TRANSITIONS, TaskStatus, can_move
from .task import Transition

__all__ = [
    "Rooms",
    "rooms",
    "FakeClock",
    "StepExecutor",
    "check_history",
    "inline_manager",
    "json_values",
    "statuses",
    "status_paths",
    "task_type_names",
]


class Rooms(NamedTuple):
    """The rooms behind a :class:`~taskmgr.TaskManager`, for white-box tests of one of them."""

    store: Any  # taskmgr.store.Store
    executor: Any  # taskmgr.executor.Executor
    lifecycle: Any  # taskmgr._lifecycle.Lifecycle
    runner: Any  # taskmgr._runner.Runner
    dispatcher: Any  # taskmgr._dispatch.Dispatcher
    node: Any  # taskmgr._node.Node
    waiters: Any  # taskmgr._waiters.Waiters


def rooms(manager: TaskManager) -> Rooms:
    """The rooms of ``manager`` as they are now (a fork or a failed start makes new ones).

    The one seam through which the project's own tests look behind the facade: each room's
    public methods and properties are its documented interface, its underscored names are not.
    Not a stable API for hosts.
    """
    return Rooms(manager._store, manager._executor, manager._lifecycle, manager._runner,
                 manager._dispatcher, manager._node, manager._waiters)


class FakeClock:
    """A clock that moves only when told: pass it as ``TaskManager(clock=...)``.

    :param start: the initial time, seconds since the epoch.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` and return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; got {seconds!r} seconds")
        with self._lock:
            self._now += seconds
            return self._now


class StepExecutor(ManualTimer):
    """An executor that runs nothing until :meth:`run_next` is called.

    Each :meth:`run_next` starts the oldest submitted job on a new thread and
    returns that thread. Timed and periodic calls run from
    :meth:`~taskmgr.TaskManager.run_due`, on the calling thread.
    """

    synchronous = False

    def __init__(self) -> None:
        super().__init__()
        self._jobs: deque[Callable[[], None]] = deque()
        self._threads: list[threading.Thread] = []

    @property
    def pending(self) -> int:
        """How many submitted jobs have not been started."""
        return len(self._jobs)

    def start(self) -> None:
        pass

    def submit(self, fn: Callable[[], None]) -> None:
        self._jobs.append(fn)

    def run_next(self) -> threading.Thread:
        """Start the oldest submitted job on a thread of its own and return the thread.

        :raises LookupError: when no job is waiting.
        """
        try:
            fn = self._jobs.popleft()
        except IndexError:
            raise LookupError("no job is waiting to run") from None
        thread = threading.Thread(target=fn, name="taskmgr-step", daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def shutdown(self, wait: bool = True) -> None:
        if wait:
            for thread in self._threads:
                thread.join()


def check_history(transitions: Iterable[Transition]) -> dict[int, TaskStatus | str]:
    """Check recorded transitions (``manager.history()``) against the table; return each task's last status.

    Every task's record must start with its creation (``None -> NEW``), each
    move must start where the previous one ended, and each must be one the
    table allows.

    :raises AssertionError: naming the first move that breaks a rule.
    """
    last: dict[int, TaskStatus | str] = {}
    for move in transitions:
        if move.from_status is None:
            if move.to_status is not TaskStatus.NEW or move.task_id in last:
                raise AssertionError(f"task {move.task_id}: a creation must come first and be NEW: {move}")
        else:
            if last.get(move.task_id) != move.from_status:
                raise AssertionError(
                    f"task {move.task_id}: move {move} does not start from its last status {last.get(move.task_id)}"
                )
            if not (
                isinstance(move.from_status, TaskStatus)
                and isinstance(move.to_status, TaskStatus)
                and can_move(move.from_status, move.to_status)
            ):
                raise AssertionError(f"task {move.task_id}: the table does not allow {move}")
        last[move.task_id] = move.to_status
    return last


@contextlib.contextmanager
def inline_manager(**kwargs: Any) -> Iterator[TaskManager]:
    """A started inline :class:`~taskmgr.TaskManager` on a temporary file, removed afterwards.

    Keyword arguments go to the manager (``clock=FakeClock()`` for time
    control). Register task types on it, then submit: each runs at once.
    """
    with tempfile.TemporaryDirectory(prefix="taskmgr-test-") as tmp:
        mgr = TaskManager(os.path.join(tmp, "tasks.db"), executor="inline", synchronous="OFF", **kwargs)
        try:
            yield mgr.start()
        finally:
            mgr.shutdown()


# ------------------------------------------------------------- strategies
def _st() -> Any:
    try:
        from hypothesis import strategies
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "taskmgr.testing's strategies need hypothesis: pip install 'taskmgr[test]'"
        ) from exc
    return strategies


def json_values(max_leaves: int = 20) -> Any:
    """Values a task accepts as input and may return: JSON's types, finite floats, string keys."""
    st = _st()
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text()
    )
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
        max_leaves=max_leaves,
    )


def statuses(*, terminal: bool | None = None) -> Any:
    """Any of the twelve statuses; only terminal ones, or only live ones, when asked."""
    st = _st()
    pool = [s for s in TaskStatus if terminal is None or s.terminal == terminal]
    return st.sampled_from(pool)


def status_paths(start: TaskStatus = TaskStatus.NEW, max_length: int = 12) -> Any:
    """Lists of statuses a task can really pass through: every step is a move the table allows."""
    st = _st()

    @st.composite
    def walk(draw: Any) -> list[TaskStatus]:
        path = [start]
        while len(path) < max_length and TRANSITIONS[path[-1]]:
            if draw(st.booleans()) and len(path) > 1:
                break
            path.append(draw(st.sampled_from(sorted(TRANSITIONS[path[-1]], key=lambda s: s.value))))
        return path

    return walk()


def task_type_names() -> Any:
    """Names a task type may be registered under."""
    st = _st()
    return st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.:-]{0,30}\Z")
