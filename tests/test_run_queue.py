"""A hypothesis state machine over the run queue: the pool executor's FIFO, its reservations and
places in line, driven with real threads against a model.

Every job is a gate: it logs its start and waits for the test to let it end, so which jobs run
is something the test can wait for (bounded), never sleep and hope. The model says which jobs
must be running after each step: jobs submitted on a reserved worker first, then the others in
their place in line while workers are free beyond the reservations.
"""

from __future__ import annotations

import bisect
import threading
import time

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from taskmgr.executor import PoolExecutor

WORKERS = 3
WAIT = 10.0


class RunQueue(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.ex = PoolExecutor(WORKERS)
        self.ex.start()
        self.lock = threading.Lock()
        self.started: list[int] = []  # job numbers, in the order they started
        self.gates: dict[int, threading.Event] = {}
        self.ended: set[int] = set()
        self.next_job = 0
        # the model
        self.reserved = 0  # reservations held and not yet used or given back
        self.promised: list[int] = []  # jobs submitted on a reservation, not started
        self.line: list[tuple[int, int]] = []  # (place, job) of unreserved jobs, not started, in order
        self.appended = 0  # the last place in line given
        self.running: set[int] = set()
        self.marks: list[int] = []

    def teardown(self) -> None:
        for gate in self.gates.values():
            gate.set()
        self.ex.shutdown(wait=True)

    # ------------------------------------------------------------------ the jobs
    def _job(self) -> tuple[int, object]:
        n = self.next_job
        self.next_job += 1
        gate = self.gates[n] = threading.Event()

        def run() -> None:
            with self.lock:
                self.started.append(n)
            assert gate.wait(WAIT * 3)
            with self.lock:
                self.ended.add(n)

        return n, run

    def _outstanding(self) -> int:
        return len(self.running) + len(self.promised) + len(self.line)

    def _settle(self) -> None:
        """Start in the model what must start now, then wait for the pool to agree."""
        while self.promised:
            self.running.add(self.promised.pop(0))
        while self.line and WORKERS - len(self.running) - self.reserved > 0:
            self.running.add(self.line.pop(0)[1])
        deadline = time.monotonic() + WAIT
        while True:
            with self.lock:
                live = set(self.started) - self.ended
            if live == self.running:
                return
            assert live <= self.running | set(self.promised), f"started out of turn: {live - self.running}"
            assert time.monotonic() < deadline, f"expected running {self.running}, the pool runs {live}"
            time.sleep(0.001)

    # ------------------------------------------------------------------ rules
    @rule()
    def submit(self) -> None:
        n, run = self._job()
        self.appended += 1
        self.line.append((self.appended, n))
        self.ex.submit(run)  # type: ignore[arg-type]
        self._settle()

    @rule(n=st.integers(min_value=0, max_value=WORKERS + 1))
    def reserve(self, n: int) -> None:
        held = self.ex.reserve(n)
        assert held == min(n, max(0, WORKERS - self._outstanding() - self.reserved))
        self.reserved += held

    @precondition(lambda self: self.reserved > 0)
    @rule()
    def submit_on_a_reservation(self) -> None:
        n, run = self._job()
        self.reserved -= 1
        self.promised.append(n)
        self.ex.submit(run, reserved=True)  # type: ignore[arg-type]
        self._settle()

    @precondition(lambda self: self.reserved > 0)
    @rule()
    def give_a_reservation_back(self) -> None:
        self.reserved -= 1
        self.ex.release(1)
        self._settle()

    @rule()
    def mark(self) -> None:
        assert self.ex.mark() == self.appended
        self.marks.append(self.appended)

    @precondition(lambda self: bool(self.marks))
    @rule(data=st.data())
    def submit_in_an_earlier_place(self, data) -> None:
        place = data.draw(st.sampled_from(self.marks))
        n, run = self._job()
        places = [p for p, _ in self.line]
        self.line.insert(bisect.bisect_right(places, place), (place, n))
        self.ex.submit_from(run, place)  # type: ignore[arg-type]
        self._settle()

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def finish(self, data) -> None:
        n = data.draw(st.sampled_from(sorted(self.running)))
        self.gates[n].set()
        deadline = time.monotonic() + WAIT
        while True:
            with self.lock:
                if n in self.ended:
                    break
            assert time.monotonic() < deadline, f"job {n} did not end"
            time.sleep(0.001)
        self.running.discard(n)
        self._settle()

    @invariant()
    def never_more_running_than_workers(self) -> None:
        with self.lock:
            live = set(self.started) - self.ended
        assert len(live) <= WORKERS
        assert self.ex.queued == len(self.promised) + len(self.line)
        assert self.ex.waiting == len(self.line)


TestRunQueue = RunQueue.TestCase
TestRunQueue.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
