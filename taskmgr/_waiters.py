"""Waiters: threads blocked in ``wait`` and ``wait_many`` until tasks finish.

Owns: the *generation* (a count bumped by every commit that finishes a task),
the condition waiters sleep on, and each ``wait_many``'s list of the tasks
finished since it last looked.

Threads: callers of ``wait``/``wait_many`` sleep here; the thread leading a
commit calls :meth:`Waiters.on_commit` (one commit at a time, so the bump
needs no lock: the condition is taken only when someone waits); a shutdown
calls :meth:`Waiters.wake_all`.

Invariant: a waiter reads the generation *before* it reads the tasks, so a
commit between the two is never missed; every sleep is bounded by
``poll_interval`` (changes made by other processes raise no notification).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._codec import check_id
from .errors import TaskNotFound, WaitTimeout
from .status import TERMINAL, TaskStatus
from .store import Store
from .task import Task


class Waiters:
    """Wakes the threads waiting for tasks of this store to finish."""

    def __init__(self, store: Store, poll_interval: float, check_open: Callable[[], None]) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._check_open = check_open
        self._finished = threading.Condition()  # notified when a commit finished tasks someone waits for
        self._generation = 0
        self._sleeping = 0  # threads in a wait: a commit notifies only when there are some
        self._watchers: dict[object, list[int]] = {}  # one per wait_many(): the ids each commit finished

    @property
    def watching(self) -> int:
        """How many ``wait_many`` calls watch the commits now."""
        return len(self._watchers)

    def on_commit(self, changes: list[tuple[int, Any, TaskStatus]]) -> None:
        """The store's commit listener (on the committing thread)."""
        for _, _, to in changes:
            if to in TERMINAL:
                self._generation += 1
                if self._sleeping or self._watchers:
                    with self._finished:
                        if self._watchers:
                            done = [task_id for task_id, _, status in changes if status in TERMINAL]
                            for watcher in self._watchers.values():
                                watcher.extend(done)
                        self._finished.notify_all()
                return

    def wake_all(self) -> None:
        """Wake every waiter (the manager shut down: each finds it so)."""
        with self._finished:
            self._generation += 1
            self._finished.notify_all()

    def _sleep(self, generation: int, pause: float, finished: list[int] | None = None) -> list[int]:
        """Sleep up to ``pause`` unless the generation moved on (or ``finished`` has ids); return
        and clear ``finished``."""
        with self._finished:
            self._sleeping += 1
            try:
                if self._generation == generation and not finished and pause > 0:
                    self._finished.wait(pause)
            finally:
                self._sleeping -= 1
            if finished is None:
                return []
            seen = finished[:]
            finished.clear()
            return seen

    def wait(self, task_id: int, timeout: float | None) -> Task:
        """See :meth:`taskmgr.TaskManager.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            generation = self._generation  # before the read: a commit after it is not missed
            self._check_open()
            task = self._store.get(task_id)
            if task is None:
                raise TaskNotFound(task_id)
            if task.terminal:
                return task
            pause = self._poll_interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"task {task_id} is still {task.status.name} after {timeout} s")
                pause = min(pause, left)
            self._sleep(generation, pause)

    def wait_many(self, task_ids: Iterable[int], timeout: float | None) -> list[Task]:
        """See :meth:`taskmgr.TaskManager.wait_many`."""
        order = [check_id(task_id) for task_id in task_ids]
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        pending: dict[int, TaskStatus | None] = dict.fromkeys(order)  # the unfinished, in order
        done: dict[int, Task] = {}
        finished: list[int] = []
        token = object()
        with self._finished:
            self._watchers[token] = finished
        try:
            check, full, next_full = list(pending), True, 0.0
            while True:
                generation = self._generation
                began = time.monotonic()
                self._settle(check, pending, done)
                if not pending:
                    return [done[task_id] for task_id in order]
                now = time.monotonic()
                if full:  # passes over every unfinished task, spaced to ten times their own length
                    next_full = now + max(self._poll_interval, 10 * (now - began))
                if deadline is not None and now >= deadline:
                    if full:
                        first, status = next(iter(pending.items()))
                        raise WaitTimeout(
                            f"{len(pending)} of {len(done) + len(pending)} tasks are still not terminal after "
                            f"{timeout} s; the first is task {first}, {status.name if status else 'unread'}")
                    check, full = list(pending), True  # the last word on every task before a timeout
                    continue
                pause = (next_full if deadline is None else min(next_full, deadline)) - now
                just_finished = self._sleep(generation, pause, finished)
                self._check_open()
                now = time.monotonic()
                full = now >= next_full or (deadline is not None and now >= deadline)
                check = list(pending) if full else [task_id for task_id in just_finished if task_id in pending]
        finally:
            with self._finished:
                del self._watchers[token]

    def _settle(self, check: list[int], pending: dict[int, TaskStatus | None], done: dict[int, Task]) -> None:
        """Read the statuses of ``check``; move those found terminal to ``done``, with their rows."""
        if not check:
            return
        statuses = self._store.statuses(check)
        ended = []
        for task_id in check:
            status = statuses.get(task_id)
            if status is None:
                raise TaskNotFound(task_id)
            if status.terminal:
                ended.append(task_id)
            else:
                pending[task_id] = status
        if not ended:
            return
        rows = {task.id: task for task in self._store.select(ids=ended)}
        for task_id in ended:
            task = rows.get(task_id)
            if task is None:  # deleted between the two reads
                raise TaskNotFound(task_id)
            if task.terminal:
                done[task_id] = task
                del pending[task_id]
            else:
                pending[task_id] = task.status
