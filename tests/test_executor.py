"""The pool executor on its own: nothing lost, no more than ``workers`` at once, no task stuck
behind a long one, and no thread left polling or parked once the work stops."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmgr.executor import PoolExecutor

WAIT = 10.0  # seconds a liveness check waits before it fails (never reached when all is well)


@contextlib.contextmanager
def started(workers: int) -> Iterator[PoolExecutor]:
    """A started pool of ``workers``, shut down (waiting for its callables) on the way out."""
    ex = PoolExecutor(workers)
    ex.start()
    try:
        yield ex
    finally:
        ex.shutdown(wait=True)


class Drains(NamedTuple):
    """The pool's drain jobs and callables, counted (see :class:`PoolExecutor`)."""

    draining: int  # drain jobs added and not yet returned
    starting: int  # of those, not yet looking at the FIFO
    parked: int  # blocked until woken
    rung: int  # wakes put on the bell and not yet taken
    polling: int  # looking at the FIFO every POLL seconds
    busy: int  # callables running


def _drains(pool: PoolExecutor) -> Drains:
    return Drains(**pool.drains)


@pytest.fixture
def pool() -> Iterator[PoolExecutor]:
    with started(4) as ex:
        yield ex


class Tally:
    """Counts runs per key and the most callables seen running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[int, int] = {}
        self.now = 0
        self.most = 0
        self.all_done = threading.Event()
        self.expected = 0

    def job(self, key: int, hold: float = 0.0):
        def run() -> None:
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            if hold:
                time.sleep(hold)
            with self.lock:
                self.now -= 1
                self.runs[key] = self.runs.get(key, 0) + 1
                if sum(self.runs.values()) == self.expected:
                    self.all_done.set()

        return run


def _until(cond, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {WAIT} s for {what}")
        time.sleep(0.005)


def test_every_callable_submitted_from_several_threads_runs_exactly_once(pool: PoolExecutor) -> None:
    tally = Tally()
    tally.expected = 4 * 500

    def submitter(base: int) -> None:
        for i in range(500):
            pool.submit(tally.job(base + i))
            if i % 97 == 0:
                time.sleep(0.03)  # let the drains poll, then park, then be woken again

    threads = [threading.Thread(target=submitter, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tally.all_done.wait(WAIT), f"{sum(tally.runs.values())} of {tally.expected} ran"
    assert sorted(tally.runs) == sorted(k * 1000 + i for k in range(4) for i in range(500))
    assert set(tally.runs.values()) == {1}
    assert tally.most <= 4


def test_tasks_behind_long_ones_get_the_other_workers(pool: PoolExecutor) -> None:
    """Four callables that only finish together: each needs a worker of its own at once, including
    the ones submitted while a drain polls (it takes one; the others must be woken or added)."""
    barrier = threading.Barrier(4, timeout=WAIT)
    passed = []

    def meet() -> None:
        barrier.wait()
        passed.append(1)

    pool.submit(lambda: None)  # a stream has started: a drain polls now
    time.sleep(0.005)
    for _ in range(4):
        pool.submit(meet)
    _until(lambda: len(passed) == 4, "four callables running together")


def test_a_short_task_is_not_stuck_behind_a_long_one() -> None:
    with started(2) as pool:
        release = threading.Event()
        short_done = threading.Event()
        pool.submit(lambda: release.wait(WAIT))
        pool.submit(short_done.set)
        assert short_done.wait(WAIT), "the short task waited for the long one"
        assert not release.is_set()
        release.set()


def test_after_a_stream_no_drain_polls_and_the_threads_are_given_back(pool: PoolExecutor) -> None:
    tally = Tally()
    tally.expected = 200
    for i in range(200):
        pool.submit(tally.job(i))
    assert tally.all_done.wait(WAIT)
    _until(lambda: _drains(pool).polling == 0, "the polling drain to park")
    _until(lambda: _drains(pool).draining == 0, "the drains to give their threads back")
    drains = _drains(pool)
    assert drains.parked == 0 and drains.rung == 0 and drains.busy == 0


def test_a_task_after_the_drains_parked_is_woken_at_once(pool: PoolExecutor) -> None:
    ran = threading.Event()
    pool.submit(lambda: None)
    _until(lambda: _drains(pool).polling == 0 and _drains(pool).parked > 0, "the drain to park")
    pool.submit(ran.set)
    assert ran.wait(WAIT)


def test_shutdown_ends_polling_and_parked_drains() -> None:
    pool = PoolExecutor(4)
    pool.STREAM_IDLE = pool.LINGER = 60.0  # the poller keeps polling, the others stay parked, until the shutdown
    pool.start()
    barrier = threading.Barrier(4, timeout=WAIT)
    for _ in range(4):
        pool.submit(barrier.wait)  # four drains: afterwards one polls, three park
    _until(lambda: _drains(pool).busy == 0 and _drains(pool).polling == 1 and _drains(pool).parked == 3,
           "one drain polling, three parked")
    pool.shutdown(wait=True)
    _until(lambda: _drains(pool).draining == 0, "every drain to end")
    pool.submit(lambda: pytest.fail("ran after shutdown"))
    assert pool.queued == 0


def test_reserve_counts_queued_callables_as_taking_workers(pool: PoolExecutor) -> None:
    release = threading.Event()
    for _ in range(3):
        pool.submit(lambda: release.wait(WAIT))
    _until(lambda: _drains(pool).busy == 3, "three callables running")
    assert pool.reserve(4) == 1
    assert pool.reserve(1) == 0
    pool.release(1)
    release.set()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 12), st.sampled_from([0.0, 0.0005, 0.003]),
                          st.sampled_from([0.0, 0.002, 0.025])), min_size=1, max_size=6))
def test_bursts_of_any_shape_all_run_within_the_worker_limit(bursts: list[tuple[int, float, float]]) -> None:
    """Bursts of callables (how many, how long each runs, the pause before the next burst:
    sometimes long enough for the poller to park) all run once, never more than three at once."""
    with started(3) as pool:
        tally = Tally()
        tally.expected = sum(n for n, _, _ in bursts)
        key = 0
        for n, hold, pause in bursts:
            for _ in range(n):
                pool.submit(tally.job(key, hold))
                key += 1
            time.sleep(pause)
        assert tally.all_done.wait(WAIT), f"{sum(tally.runs.values())} of {tally.expected} ran"
        assert set(tally.runs.values()) == {1} and len(tally.runs) == key
        assert tally.most <= 3


def test_a_reserved_worker_is_not_taken_by_a_call_queued_meanwhile() -> None:
    """The manager reserves a worker, commits its task RUNNING, then submits it: an unreserved call
    (a queued task) submitted in between must not take that worker and leave the RUNNING one waiting."""
    with started(1) as pool:
        release = threading.Event()
        promised_ran = threading.Event()
        assert pool.reserve(1) == 1
        pool.submit(lambda: release.wait(3 * WAIT))  # queued meanwhile, no reservation
        time.sleep(0.02)  # time enough for a drain to take it, were it allowed to
        pool.submit(promised_ran.set, reserved=True)
        assert promised_ran.wait(WAIT), "the reserved call waited behind an unreserved one"
        assert not release.is_set()
        release.set()
        _until(lambda: pool.queued == 0 and _drains(pool).busy == 0, "the unreserved call to run after it")


def test_a_released_reservation_lets_waiting_calls_start() -> None:
    with started(1) as pool:
        ran = threading.Event()
        assert pool.reserve(1) == 1
        pool.submit(ran.set)
        assert not ran.wait(0.05)  # the only worker is promised
        pool.release(1)
        assert ran.wait(WAIT)


def test_a_callable_that_raises_systemexit_does_not_cost_the_pool_a_worker() -> None:
    with started(2) as pool:
        def leave() -> None:
            raise SystemExit(3)

        for _ in range(4):
            pool.submit(leave)
        ran = threading.Event()
        pool.submit(ran.set)
        assert ran.wait(WAIT)


@pytest.mark.parametrize("started", [True, False])
def test_counters_settle_when_shutdown_follows_a_submit_at_once(started: bool) -> None:
    pool = PoolExecutor(4)
    if started:
        pool.start()
    for _ in range(4):
        pool.submit(lambda: None)
    pool.shutdown(wait=True)
    drains = _drains(pool)
    assert (drains.draining, drains.starting, drains.parked, drains.polling, pool.queued) == (0, 0, 0, 0, 0)


def test_apschedulers_error_for_a_poll_refused_at_interpreter_exit_is_not_logged() -> None:
    """concurrent.futures refuses work once the interpreter exits; a node's shutdown finishing
    then keeps the node alive by itself, and APScheduler's traceback for the poll it could not
    hand over would only alarm. Other errors are logged."""
    import logging

    from taskmgr.executor import _SCHEDULER_LOG

    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord("taskmgr.scheduler", logging.ERROR, __file__, 1, "Error submitting job",
                                 None, (type(exc), exc, None))

    assert not _SCHEDULER_LOG.filter(record(RuntimeError("cannot schedule new futures after interpreter shutdown")))
    assert _SCHEDULER_LOG.filter(record(RuntimeError("something else")))
