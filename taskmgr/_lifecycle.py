"""Start and stop: a manager's run state, one transition at a time, in a fixed order.

Owns: the state (idle, running, stopping, shut down), the *stopping* event
(set the moment a stop is asked: from then on no task starts), the one
stopper thread that carries a stop out, and the interpreter-exit hook that
stops nodes left running.

Threads: any caller of ``start``/``stop``; the stopper thread
(``taskmgr-stopper``, not a daemon: the interpreter's exit waits for it);
the exit hook. ``_state_lock`` guards the state, the stopper and a stop
deferred by the thread inside ``start``; ``_transition_lock`` is held through
a start and through a stop, so a stop asked during a start waits for it.

The stop's order (the manager supplies the steps): interrupt the callables
if asked; close the executor and, while the running callables finish, keep
the node alive (lease, remote cancels, progress); record what is left
(outcomes, progress), hand back what the node owns, leave the registry;
close the store; wake every waiter. A stop asked on a pool worker, on the
thread leading a commit, or while another caller waits for the stop, returns
at once and the stopper goes on by itself; an interrupted wait for it (a
second Ctrl-C) leaves it going, and a later ``stop`` waits for it again.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import weakref
from collections.abc import Callable

from .errors import ManagerStateError

log = logging.getLogger(__name__)


class State(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"  # a stop is under way: every call still works, no task starts
    SHUT_DOWN = "shut down"


#: (wait, interrupt, at_exit): how a stop was asked
StopRequest = tuple[bool, bool, bool]


class Lifecycle:
    """The run state of one manager, and the order of its transitions."""

    def __init__(self, stop_steps: Callable[[bool, bool, bool, bool], None]) -> None:
        self._stop_steps = stop_steps  # (was_running, wait, interrupt, at_exit): the manager's stop
        self.state = State.IDLE
        self.stopping = threading.Event()
        self.pid = os.getpid()  # the process this lifecycle belongs to
        self._state_lock = threading.RLock()  # re-entrant: a signal handler may stop inside a stop
        self._transition_lock = threading.Lock()
        self._starting: int | None = None  # the thread inside start(), while it is
        self._deferred: StopRequest | None = None  # a stop asked by that very thread (a signal handler)
        self._stopper: threading.Thread | None = None
        self._stopped = threading.Event()  # set by the stopper as it ends: what a stop waits for
        self._joiners = 0  # callers waiting for the stopper
        self._stop_error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING

    def require_open(self) -> None:
        if self.state is State.SHUT_DOWN:
            raise ManagerStateError("the task manager is shut down; create a new TaskManager to use the store again")

    # ------------------------------------------------------------------ start
    def start(self, begin: Callable[[], None], undo: Callable[[], None]) -> None:
        """IDLE -> RUNNING around ``begin()``; a ``begin`` that raises is undone (``undo()``) and
        leaves the state IDLE. A stop asked meanwhile on this thread runs once it is over."""
        with self._state_lock:
            if self.state is not State.IDLE:
                raise ManagerStateError(f"Cannot start the task manager when it is in the {self.state.value!r} state")
            self.state = State.RUNNING
            self._starting = threading.get_ident()
        try:
            with self._transition_lock:
                try:
                    begin()
                except BaseException:
                    try:
                        undo()
                    finally:
                        with self._state_lock:
                            self.state = State.IDLE
                    raise
                _hook_exit()
                _LIVE.add(self)
        finally:
            with self._state_lock:
                self._starting = None
                deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self.stop(*deferred, may_wait=True)

    # ------------------------------------------------------------------ stop
    def stop(self, wait: bool, interrupt: bool, at_exit: bool, *, may_wait: bool) -> None:
        """Ask for a stop and, with ``may_wait`` and nobody else waiting, wait for it."""
        with self._state_lock:
            if self.state is State.SHUT_DOWN:
                return
            if self._starting == threading.get_ident():
                self._deferred = (wait, interrupt, at_exit)
                return
            stopper = self._stopper
            if stopper is None:
                was_running = self.state is State.RUNNING
                self.state = State.STOPPING
                self.stopping.set()
                _LIVE.discard(self)
                stopper = self._stopper = threading.Thread(
                    target=self._carry_out, args=(was_running, wait, interrupt, at_exit),
                    name="taskmgr-stopper", daemon=False)
                stopper.start()
            if not may_wait or self._joiners or stopper is threading.current_thread():
                return
        counted = False
        try:
            with self._state_lock:
                self._joiners += 1
                counted = True
            # an Event, not Thread.join(): on CPython 3.11 a KeyboardInterrupt in join() marks the
            # thread stopped while it still runs, and the interpreter's exit would not wait for it
            self._stopped.wait()
        finally:
            if counted:
                with self._state_lock:
                    self._joiners -= 1
        error, self._stop_error = self._stop_error, None
        if error is not None:
            raise error

    def _carry_out(self, was_running: bool, wait: bool, interrupt: bool, at_exit: bool) -> None:
        with self._transition_lock:  # after a start under way
            try:
                self._stop_steps(was_running, wait, interrupt, at_exit)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller waiting for the stop
                self._stop_error = exc
                log.debug("the stop raised %r", exc)
            finally:
                with self._state_lock:
                    self.state = State.SHUT_DOWN
                self._stopped.set()


#: started lifecycles not yet stopping: the interpreter's exit stops them (see _at_exit)
_LIVE: weakref.WeakSet[Lifecycle] = weakref.WeakSet()
#: what the exit hook calls for each: set by the manager, which knows its executor
EXIT_STOPS: weakref.WeakKeyDictionary[Lifecycle, Callable[[], None]] = weakref.WeakKeyDictionary()


def _at_exit() -> None:
    pid = os.getpid()
    for lifecycle in list(_LIVE):
        stop = EXIT_STOPS.get(lifecycle)
        if lifecycle.pid != pid or stop is None:  # a forked child's copy, or left as a crash leaves it
            continue
        try:
            stop()
        except Exception:
            log.exception("could not stop a task manager node at interpreter exit")


_exit_hook_lock = threading.Lock()
_exit_hooked = False


def _hook_exit() -> None:
    """Run :func:`_at_exit`, once, when the interpreter begins to exit, before it joins
    non-daemon threads (``threading._register_atexit``, what ``concurrent.futures`` uses; ``atexit``
    where it is missing would run it only after). Registered at the first start: after the thread
    pools' own hook, so it runs before that hook makes them refuse work."""
    global _exit_hooked
    import atexit

    with _exit_hook_lock:
        if _exit_hooked:
            return
        register = getattr(threading, "_register_atexit", atexit.register)
        try:
            register(_at_exit)
        except RuntimeError:  # the interpreter is exiting already: nothing will run it
            return
        _exit_hooked = True
