"""The process as a node: its lease, and the duties of a node that runs tasks.

Owns four duties, each a method of its own, all run by the housekeeping poll
(:meth:`Node.tick`) or by ``start()``:

* **lease**: the node is registered with its own lease length (its
  ``node_timeout``) and process identity; each heartbeat renews the lease on
  the *database's* clock. Other nodes judge it by its lease and that clock,
  never by their own timeout or clock (see :meth:`~taskmgr.store.Store.reap_nodes`).
* **take-over** (:meth:`restore`): the unfinished tasks of nodes whose lease
  ran out: queued here when this node runs their type, left unowned and
  runnable otherwise. One that fails part-way (a locked or full store) is
  owed, and tried again at the next heartbeat.
* **claims**: unowned NEW and RESTORING tasks of the types this node runs.
* **wake-ups**: PENDING tasks whose time came (a delayed start, a retry).

Threads: the housekeeping poll, a timed wake-up, and the thread in
``start()``. ``_wake_retry_lock`` guards the one pending look again at due
tasks another transaction held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

from . import _moves as moves
from ._dispatch import Dispatcher
from ._runner import Runner
from .errors import StoreError
from .executor import Executor
from .store import Store, now_ms

log = logging.getLogger(__name__)


class Node:
    """The duties of a started manager towards the store it shares with other nodes."""

    #: due PENDING tasks one wake-up transaction takes
    WAKE_BATCH = 500
    #: seconds after which a wake-up looks again at due tasks it found held by another transaction
    WAKE_RETRY = 0.05
    #: orphaned tasks one take-over transaction examines
    TAKE_OVER_BATCH = 1000

    def __init__(self, store: Store, executor: Executor, dispatcher: Dispatcher, runner: Runner, *,
                 name: str, types: Collection[str], lease: float, poll_interval: float, max_restores: int,
                 clock: Callable[[], float]) -> None:
        self.name = name
        self._store = store
        self._executor = executor
        self._dispatcher = dispatcher
        self._runner = runner
        self._actor = moves.Actor(name, types, True, max_restores)
        self._lease = lease
        self._poll_interval = poll_interval
        self._clock = clock
        self._renewed = 0.0  # time.monotonic() of the last renewal
        self._restore_owed = False
        self._wake_retry_lock = threading.Lock()
        self._wake_retry: tuple[bool, float] = (False, self.WAKE_RETRY)  # (one pending?, its next delay)

    # ------------------------------------------------------------------ lease
    def register(self) -> None:
        """Enter the registry, with this node's own lease."""
        self._store.register_node(self.name, now_ms(self._clock), lease=self._lease)
        self._renewed = time.monotonic()

    def leave(self) -> None:
        """Out of the registry: nothing of this node's runs any more."""
        self._store.remove_node(self.name)

    def abandon(self) -> None:
        """End the lease at once, for runs left going (a shutdown without wait): the next node to
        look takes them over, as it would a crashed node's."""
        self._store.expire_node(self.name)

    def _reap(self) -> tuple[set[str], list[str]]:
        """The registered nodes, alive and dead (the dead removed); a node row of schema 1, which
        records no lease, is judged by this node's own."""
        return self._store.reap_nodes(int(self._lease * 1000))

    def heartbeat(self, take_over: bool = True) -> None:
        """Renew the lease (a third of it at a time); with ``take_over`` (every poll), take over
        the tasks of nodes whose own lease ran out, or finish a take-over owed."""
        if time.monotonic() - self._renewed >= self._lease / 3:
            if not self._store.heartbeat(self.name):
                # another node judged this one's lease over (a stall: a suspended machine, a paused
                # process) and removed it; unregistered, its tasks would be taken over by anyone
                self.register()
                log.warning("node %s had lost its lease (no renewal for %g s): registered it again; tasks it "
                            "ran then may have been taken over and run again", self.name, self._lease)
            self._renewed = time.monotonic()
        if not take_over:
            return
        _alive, dead = self._reap()
        if dead:
            log.warning("node(s) %s stopped without shutting down; taking over their tasks", ", ".join(dead))
        if dead or self._restore_owed:
            self.restore()

    # ------------------------------------------------------------------ take-over
    def restore(self) -> int:
        """Take over the tasks of nodes no longer registered; returns how many it examined. A
        failure part-way leaves the rest owed to the next heartbeat, and is raised."""
        self._restore_owed = True
        live, _dead = self._reap()
        live.add(self.name)
        touched, after = 0, 0
        try:
            while True:
                ids = self._store.orphan_ids(live, after, self.TAKE_OVER_BATCH)
                if not ids:
                    break
                after = ids[-1]
                for tid in self._store.write(moves.take_over, self._actor, ids):
                    self._dispatcher.dispatch(tid)
                touched += len(ids)
                self.heartbeat(take_over=False)  # a long take-over must not outlast this node's own lease
        except StoreError:
            log.warning("the take-over by node %s stopped after %d task(s); the next heartbeat goes on",
                        self.name, touched)
            raise
        self._restore_owed = False
        if touched:
            log.info("restored %d task(s) left by stopped nodes", touched)
        return touched

    # ------------------------------------------------------------------ claims and wake-ups
    def claim(self) -> None:
        """Queue here the unowned NEW or RESTORING tasks of the types this node runs."""
        if not self._actor.types:
            return
        rows = self._store.claimable_rows(list(self._actor.types), 500)
        if rows:
            for tid in self._store.write(moves.claim, self._actor, rows):
                self._dispatcher.dispatch(tid)

    def wake_due(self) -> None:
        """Requeue PENDING tasks whose time came (delayed start, retry backoff)."""
        now = now_ms(self._clock)
        while True:
            ids = self._store.due_pending_ids(self.name, list(self._actor.types), now, self.WAKE_BATCH)
            if not ids:
                self._wake_retry_reset()
                return
            woken, held_elsewhere = self._store.write(moves.wake, self._actor, ids, now)
            for tid in woken:
                self._dispatcher.dispatch(tid)
            if held_elsewhere:  # look again soon (not at the next poll), and not at once
                self._retry_wake()
                return
            self._wake_retry_reset()
            if len(ids) < self.WAKE_BATCH:
                return

    def wake_at(self, when: float) -> None:
        """Have a wake-up run at ``when`` (seconds since the epoch, by the manager's clock)."""
        self._executor.call_at(when, self.wake_due)

    @property
    def wake_retry_delay(self) -> float:
        """The delay of the next look again at due tasks held elsewhere (doubles while they stay held)."""
        return self._wake_retry[1]

    def _wake_retry_reset(self) -> None:
        with self._wake_retry_lock:
            self._wake_retry = (self._wake_retry[0], self.WAKE_RETRY)

    def _retry_wake(self) -> None:
        """One look again at a time, its delay doubling up to ``poll_interval`` while rows stay held."""
        with self._wake_retry_lock:
            pending, delay = self._wake_retry
            if pending:
                return
            self._wake_retry = (True, min(delay * 2, self._poll_interval))
        # test executors run timed calls by the manager's clock; the pool by the real time
        now = self._clock() if self._executor.manual_clock else time.time()

        def retry() -> None:
            with self._wake_retry_lock:
                self._wake_retry = (False, self._wake_retry[1])
            self.wake_due()

        try:
            self._executor.call_at(now + delay, retry)
        except BaseException:  # not scheduled: the next wake-up that finds a row held tries again
            with self._wake_retry_lock:
                self._wake_retry = (False, self._wake_retry[1])
            raise

    # ------------------------------------------------------------------ the poll
    def tick(self) -> None:
        """The housekeeping poll of a running node: each duty in turn, a failure logged alone."""
        for step in (self._runner.retry_unsaved, self._dispatcher.redispatch, self._runner.flush_progress,
                     self._runner.poll_cancels, self.wake_due, self.claim, self.heartbeat):
            try:
                step()
            except StoreError as exc:  # locked or full: expected, and the next poll tries again
                log.warning("housekeeping step %s of node %s could not write (%s); the next poll tries again",
                            step.__name__, self.name, exc)
            except Exception:
                log.exception("housekeeping step %s failed", step.__name__)

    def keep_alive(self) -> None:
        """The poll of a node shutting down while callables still run: progress, remote cancels,
        lease; no new work."""
        for step in (self._runner.flush_progress, self._runner.poll_cancels, lambda: self.heartbeat(False)):
            try:
                step()
            except StoreError as exc:  # locked or full: the next round tries again
                log.warning("housekeeping of node %s while it shuts down could not write (%s)", self.name, exc)
            except Exception:
                log.exception("housekeeping of node %s while it shuts down failed", self.name)
