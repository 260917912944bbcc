"""The same models on a shared PostgreSQL: the table, the state machine, and two nodes racing.

Runs when ``TASKMGR_TEST_PG`` names a database the tests may empty, e.g.
``postgresql://postgres@127.0.0.1:5433/taskmgr_test`` (``.ci/run`` starts a
throwaway server and sets it); skipped otherwise.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

URL = os.environ.get("TASKMGR_TEST_PG")
pytestmark = [pytest.mark.skipif(not URL, reason="TASKMGR_TEST_PG is not set"), pytest.mark.slow]

from taskmgr import InvalidTransition, TaskContext, TaskManager, TaskStatus, can_move  # noqa: E402
from taskmgr import _moves as moves  # noqa: E402
from taskmgr._node import Node  # noqa: E402
from taskmgr.store import Store, Tx  # noqa: E402
from taskmgr.testing import check_history, rooms  # noqa: E402

S = TaskStatus


def _fresh():
    from playhouse.db_url import connect

    db = connect(URL)
    db.execute_sql("DROP TABLE IF EXISTS taskmgr_task, taskmgr_history, taskmgr_node, taskmgr_schema CASCADE")
    return db


def _fresh_conn():
    """Another connection to the same database: another node."""
    from playhouse.db_url import connect

    return connect(URL)


@pytest.fixture
def pg():
    db = _fresh()
    yield db
    db.close()


@pytest.mark.parametrize("check", [
    "test_owned_ids_are_the_nodes_tasks_in_that_status_ascending",
    "test_orphan_ids_are_unfinished_tasks_of_nobody_or_of_nodes_not_alive",
    "test_due_pending_ids_are_the_nodes_own_or_unowned_of_its_types_soonest_first",
    "test_claimable_rows_are_unowned_new_or_restoring_tasks_of_the_types_as_rows",
    "test_cancelling_ids_say_which_of_these_are_cancelling",
    "test_disown_pending_leaves_the_nodes_pending_tasks_to_anyone",
    "check_the_pid_shortcut",
])
def test_the_named_queries_and_the_pid_shortcut_on_postgresql(pg, check: str) -> None:
    import test_nodes

    store = Store(pg, clock=lambda: 1_000_000_000.0)
    try:
        getattr(test_nodes, check)(store)
    finally:
        store.close()


def test_nodes_are_judged_by_their_own_lease_on_postgresqls_clock(pg) -> None:
    import test_nodes

    store, other = Store(pg, clock=lambda: 1_000_000_000.0), Store(_fresh_conn(), clock=lambda: 5.0)
    try:
        test_nodes.check_the_node_lease(store, other)
    finally:
        other.close()
        store.close()


def test_every_pair_of_the_table_on_postgresql(pg) -> None:
    store = Store(pg)
    try:
        for frm, to in itertools.product(S, S):
            def op(tx, frm=frm):
                tid = tx.insert({"graphspace": "G", "graph": "g", "type": "t", "name": "n", "callable": "m.f"})
                tx.execute("UPDATE taskmgr_task SET status = %s WHERE id = %s", (frm.value, tid))
                return tid

            tid = store.write(op)
            if can_move(frm, to):
                assert store.write(lambda tx, tid=tid, frm=frm, to=to: tx.move(tid, frm, to))
                assert store.get(tid).status is to
            else:
                with pytest.raises(InvalidTransition):
                    store.write(lambda tx, tid=tid, frm=frm, to=to: tx.move(tid, frm, to))
                assert store.get(tid).status is frm
    finally:
        store.close()


def test_the_state_machine_on_postgresql() -> None:
    from test_state_machine import TaskManagerMachine

    class OnPostgres(TaskManagerMachine):
        def __init__(self) -> None:
            _fresh().close()
            super().__init__()

        def database(self):
            from playhouse.db_url import connect

            return connect(URL)

    from hypothesis import HealthCheck, settings

    OnPostgres.TestCase.settings = settings(max_examples=8, stateful_step_count=20, deadline=None,
                                            suppress_health_check=list(HealthCheck))
    OnPostgres.TestCase().runTest()


def test_two_nodes_on_one_postgresql_run_each_task_exactly_once(pg) -> None:
    from playhouse.db_url import connect

    runs: Counter[int] = Counter()
    lock = threading.Lock()

    def setup(mgr: TaskManager) -> None:
        @mgr.task("count")
        def count(ctx: TaskContext) -> int:
            with lock:
                runs[ctx.task_id] += 1
            return ctx.task_id

    client = TaskManager(pg)
    setup(client)
    nodes = [TaskManager(connect(URL), workers=2, poll_interval=0.02) for _ in range(2)]
    for node in nodes:
        setup(node)
        node.start()
    try:
        ids = client.submit_many("count", range(200))  # unowned: the two nodes race to claim them
        for tid in ids:
            assert client.wait(tid, 30).status is S.SUCCESS
        assert runs == Counter(dict.fromkeys(ids, 1))
        check_history(client.history())
    finally:
        for node in nodes:
            node.shutdown()
        client.shutdown()


def test_lists_over_part_of_a_graphs_scope_on_postgresql(pg) -> None:
    """The index walk that finds the graphspaces and graphs (a recursive query), the merge, and the
    lists' own statements (built for the driver's parameter style)."""
    store = Store(pg)
    try:
        rows = []
        for i in range(60):
            gs, g, st = "ABC"[i % 3], f"g{i % 4}", [S.NEW, S.SUCCESS, S.FAILED][i % 5 % 3]

            def op(tx, gs=gs, g=g, st=st):
                tid = tx.insert({"graphspace": gs, "graph": g, "type": "t", "name": "n", "callable": "m.f"})
                tx.execute("UPDATE taskmgr_task SET status = %s WHERE id = %s", (st.value, tid))
                return tid

            rows.append((store.write(op), gs, g, st))
        assert store.graphspaces() == ["A", "B", "C"]
        assert store.graphs("A") == sorted({g for _, gs, g, _ in rows if gs == "A"})
        for scope in ({"graph": "g1"}, {"graph": "g2", "status": S.SUCCESS}, {"graphspace": "B"},
                      {"graphspace": "C", "status": S.FAILED, "after": 20}, {"status": S.SUCCESS},
                      {"status": S.NEW, "after": 30}, {"graphspace": "A", "graph": "g1", "status": S.NEW}, {}):
            for limit in (-1, 5):
                got = [t.id for t in store.select(limit=limit, **scope)]
                want = [tid for tid, gs, g, st in rows
                        if tid > scope.get("after", 0) and scope.get("graph", g) == g
                        and scope.get("graphspace", gs) == gs and scope.get("status", st) is st]
                assert got == (want if limit < 0 else want[:limit]), (scope, limit)
        picked = [tid for tid, *_ in rows[::7]]
        assert [t.id for t in store.select(ids=picked, status=S.NEW)] == [tid for tid, _, _, st in rows[::7]
                                                                          if st is S.NEW]
        assert store.select(ids=[]) == []
    finally:
        store.close()


def test_a_prune_holds_the_rows_it_rewrites_so_another_nodes_move_is_kept(pg, monkeypatch) -> None:
    """Under READ COMMITTED a move committed between the prune's read of a row and its rewrite
    would be lost: the prune reads FOR UPDATE, and the move waits for it."""
    from taskmgr.store import Tx

    clock = [1000.0]
    a, b = Store(pg, clock=lambda: clock[0]), Store(_fresh_conn(), clock=lambda: clock[0])
    try:
        tid = a.write(lambda tx: tx.insert({"graphspace": "G", "graph": "g", "type": "t", "name": "n",
                                            "callable": "m.f"}, (S.NEW, S.QUEUED)))
        clock[0] += 100
        read, go = threading.Event(), threading.Event()
        execute = Tx.execute

        def paused(self, sql, params=()):
            if sql.startswith("UPDATE") and '"history" = %s' in sql:  # the prune's rewrite, after its read
                read.set()
                go.wait(10)
            return execute(self, sql, params)

        monkeypatch.setattr(Tx, "execute", paused)
        pruned = []
        pruner = threading.Thread(target=lambda: pruned.append(a.prune_history(1_050_000)))
        pruner.start()
        assert read.wait(10)
        mover = threading.Thread(target=lambda: b.write(lambda tx: tx.move(tid, S.QUEUED, S.RUNNING)))
        mover.start()
        mover.join(0.5)
        assert mover.is_alive()  # it waits for the prune's lock on the row
        go.set()
        pruner.join(10)
        mover.join(10)
        assert pruned == [2]
        assert [(t.from_status, t.to_status) for t in a.history(tid)] == [(S.QUEUED, S.RUNNING)]
    finally:
        a.close()
        b.close()


def test_nodes_opening_a_database_of_an_earlier_version_at_once_all_open_it(pg) -> None:
    """A database of version 1, or older (old indexes, no history column, the history table):
    each node opening it at once waits for the one migrating it (an advisory lock: two at once
    deadlocked on the indexes), then finds it migrated."""
    seed = Store(pg)
    tid = seed.write(lambda tx: tx.insert({"graphspace": "G", "graph": "g", "type": "t", "name": "n",
                                           "callable": "m.f"}, (S.NEW, S.QUEUED)))
    seed.close()
    pg.execute_sql("DROP TABLE taskmgr_schema")  # the schema before versions
    pg.execute_sql("ALTER TABLE taskmgr_node DROP COLUMN lease_ms, DROP COLUMN identity")
    pg.execute_sql("DROP INDEX taskrecord_status_graphspace_graph_id")
    pg.execute_sql("UPDATE taskmgr_task SET history = NULL")
    pg.execute_sql("ALTER TABLE taskmgr_task DROP COLUMN history")
    pg.execute_sql("CREATE INDEX taskrecord_graphspace_graph_status_id ON taskmgr_task (graphspace, graph, status, id)")
    pg.execute_sql("CREATE INDEX taskrecord_status_id ON taskmgr_task (status, id)")
    pg.execute_sql("CREATE TABLE taskmgr_history (id BIGSERIAL PRIMARY KEY, task_id BIGINT NOT NULL, "
                   "from_status TEXT, to_status TEXT NOT NULL, at BIGINT NOT NULL)")
    pg.execute_sql("INSERT INTO taskmgr_history (task_id, from_status, to_status, at) VALUES "
                   "(%s, NULL, 'new', 5), (%s, 'new', 'queued', 6)", (tid, tid))
    barrier, outcomes = threading.Barrier(6), []

    def node() -> None:
        db = _fresh_conn()
        db.connect()
        barrier.wait()
        try:
            Store(db).close()
            outcomes.append("ok")
        except Exception as exc:  # noqa: BLE001 - the test reports it
            outcomes.append(repr(exc))
        finally:
            db.close()

    threads = [threading.Thread(target=node) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcomes == ["ok"] * 6
    store = Store(pg)
    try:
        assert store.schema_version == 2 and "taskmgr_history" not in store.db.get_tables()
        assert [n for (n,) in store.db.execute_sql("SELECT name FROM taskmgr_schema ORDER BY id")] == [
            "0001_v1", "0002_node_lease_history_in_rows"]
        assert [(t.from_status, t.to_status, t.at) for t in store.history(tid)] == [(None, S.NEW, 5),
                                                                                   (S.NEW, S.QUEUED, 6)]
        assert {c.name for c in store.db.get_columns("taskmgr_node")} >= {"lease_ms", "identity"}
        names = {i.name for i in store.db.get_indexes("taskmgr_task")}
        assert "taskrecord_status_graphspace_graph_id" in names and "taskrecord_status_id" not in names
    finally:
        store.close()


def _waiting_for_a_lock(db) -> bool:
    return db.execute_sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                          "AND datname = current_database()").fetchone()[0] > 0


@pytest.mark.parametrize("control", ["cancel", "suspend"])
def test_a_control_that_loses_a_race_with_another_nodes_move_reads_the_task_again(pg, control: str) -> None:
    """The control read the task QUEUED; another node's start (QUEUED -> RUNNING) committed before
    its compare-and-set. It used to refuse with InvalidTransition naming the stale status; it now
    reads the task again: a cancel makes it CANCELLING, a suspend refuses with RUNNING named
    (found by review)."""
    import psycopg2

    client = TaskManager(pg)
    client.register("job", lambda ctx: 1)
    try:
        tid = client.submit("job")
        pg.execute_sql("UPDATE taskmgr_task SET status = 'queued', owner = 'node-b' WHERE id = %s", (tid,))
        other = _fresh_conn()
        node_b = psycopg2.connect(URL)
        try:
            cur = node_b.cursor()  # node B's start, committed once the control waits on the row
            cur.execute("UPDATE taskmgr_task SET status = 'running', ran = 1 WHERE id = %s AND status = 'queued'",
                        (tid,))
            out: list[object] = []

            def call() -> None:
                try:
                    out.append(getattr(client, control)(tid))
                except Exception as exc:  # noqa: BLE001 - checked below
                    out.append(exc)

            caller = threading.Thread(target=call)
            caller.start()
            for _ in range(1000):
                if _waiting_for_a_lock(other):
                    break
                threading.Event().wait(0.01)
            node_b.commit()
            caller.join(30)
        finally:
            node_b.close()
            other.close()
        if control == "cancel":
            assert out == [True] and client.get(tid).status is S.CANCELLING
        else:
            assert len(out) == 1 and isinstance(out[0], InvalidTransition), out
            assert "in status RUNNING" in str(out[0])
    finally:
        client.shutdown()


def test_writes_fenced_by_the_owner_on_postgresql(pg) -> None:
    from test_store import check_fenced_writes

    store = Store(pg)
    try:
        check_fenced_writes(store)
    finally:
        store.close()


def _pause_after(method: str, thread_box: list[threading.Thread], read: threading.Event, go: threading.Event):
    """Tx.<method> that, on the thread in ``thread_box``, signals ``read`` once and waits for ``go``:
    the rest of that transaction comes a moment after its read, as another node's commit lands."""
    real = getattr(Tx, method)

    def paused(self, *args):  # type: ignore[no-untyped-def]
        out = real(self, *args)
        if thread_box and threading.current_thread() is thread_box[0] and not read.is_set():
            read.set()
            assert go.wait(30)
        return out

    return real, paused


def test_two_nodes_restoring_one_dead_node_never_take_over_each_others_new_run(pg, monkeypatch) -> None:
    """Both read the dead node's RUNNING task; B restores it and starts it (RUNNING again) before C's
    transaction writes. C's move used to compare the status alone and took B's run over: the task
    ran twice and B's outcome was dropped. Every restore write now requires the owner it read
    (found by review)."""
    seed = Store(pg)
    seed.register_node("ghost:1:x", 0)
    tid = seed.write(lambda tx: tx.insert({"graphspace": "DEFAULT", "graph": "g", "type": "job", "name": "job",
                                               "callable": "m.job", "owner": "ghost:1:x", "ran": 1},
                                          (S.NEW, S.QUEUED, S.RUNNING)))
    pg.execute_sql("UPDATE taskmgr_node SET heartbeat = %s", (10**15,))  # alive while the nodes start
    runs: list[int] = []
    go_run = threading.Event()

    def job(ctx: TaskContext) -> str:
        runs.append(ctx.task_id)
        assert go_run.wait(30)
        return "ok"

    b = TaskManager(_fresh_conn(), poll_interval=0.05, node_timeout=3600)
    c = TaskManager(_fresh_conn(), poll_interval=0.05, node_timeout=3600)
    for m in (b, c):
        m.register("job", job)
        m.start()
    try:
        seed.remove_node("ghost:1:x")  # the ghost dies
        read, go = threading.Event(), threading.Event()
        box: list[threading.Thread] = []
        _real, paused = _pause_after("rows", box, read, go)
        monkeypatch.setattr(Tx, "rows", paused)
        box.append(threading.Thread(target=c.restore))
        box[0].start()
        assert read.wait(30)
        b.restore()  # B takes the task over and runs it
        for _ in range(3000):
            if rooms(b).runner.is_running(tid):
                break
            threading.Event().wait(0.01)
        go.set()
        box[0].join(30)
        assert pg.execute_sql("SELECT owner FROM taskmgr_task WHERE id = %s", (tid,)).fetchone() == (b.node,)
        go_run.set()
        done = b.wait(tid, 30)
        assert (done.status, runs) == (S.SUCCESS, [tid])
    finally:
        go_run.set()
        b.shutdown()
        c.shutdown()
        seed.close()


def test_a_claim_racing_another_nodes_claim_and_hand_back_never_leaves_the_task_queued_unowned(
    pg, monkeypatch
) -> None:
    """C reads an unowned RESTORING task to claim it; B claims it first (QUEUED, owned by B); C's
    first write comes; B hands the task back at its shutdown (RESTORING, unowned); C's transaction
    goes on. C's claim used to set the owner and then move the task QUEUED in two statements, the
    first finding it QUEUED (no change) and the second finding it RESTORING again: the task was
    left QUEUED with no owner, which no node ever starts (found by review). The claim is now one
    compare-and-set on the status and owner read, which fails here; the task stays RESTORING,
    unowned, and the next claim takes it."""
    from taskmgr.testing import StepExecutor

    idle = TaskManager(pg)
    ran: list[tuple[str, int]] = []
    idle.register("job", lambda ctx: None)
    c = TaskManager(_fresh_conn(), poll_interval=3600)
    b = TaskManager(_fresh_conn(), poll_interval=3600, executor=StepExecutor())
    c.register("job", lambda ctx: ran.append(("c", ctx.task_id)))
    b.register("job", lambda ctx: ran.append(("b", ctx.task_id)))
    c.start()
    b.start()
    steps = {name: threading.Event() for name in ("read", "b_claimed", "wrote", "b_gone")}
    claimer: list[threading.Thread] = []

    def pausing(method: str, first: str, then: str, when=lambda kw: True):  # type: ignore[no-untyped-def]
        real = getattr(Tx, method)

        def paused(self, *args, **kw):  # type: ignore[no-untyped-def]
            out = real(self, *args, **kw)
            if claimer and threading.current_thread() is claimer[0] and when(kw) and not steps[first].is_set():
                steps[first].set()
                assert steps[then].wait(30)
            return out

        monkeypatch.setattr(Tx, method, paused)

    try:
        tid = idle.submit("job", delay=3600)
        idle.resume(tid)  # an idle manager's resume: RESTORING and unowned, for a started node to claim
        assert idle.get(tid).status is S.RESTORING
        pausing("row", "read", "b_claimed")
        for method in ("update", "move"):  # C's first write that takes the task
            pausing(method, "wrote", "b_gone", lambda kw: kw.get("owner") == c.node)
        claimer.append(threading.Thread(target=rooms(c).node.claim))
        claimer[0].start()
        assert steps["read"].wait(30)
        rooms(b).node.claim()
        assert idle.get(tid).status is S.QUEUED
        steps["b_claimed"].set()
        assert steps["wrote"].wait(30)
        b.shutdown()  # hands the task back before running it
        steps["b_gone"].set()
        claimer[0].join(30)
        monkeypatch.undo()
        rooms(c).node.claim()  # C's next poll
        assert c.wait(tid, 30).status is S.SUCCESS
        assert ran == [("c", tid)]
    finally:
        for event in steps.values():
            event.set()
        b.shutdown()
        c.shutdown()
        idle.shutdown()


@pytest.mark.parametrize("resumer_started", [False, True])
def test_a_resume_racing_the_owners_hand_back_still_resumes(pg, monkeypatch, resumer_started: bool) -> None:
    """The resume read the suspended task owned by node a; a's shutdown handed it back (owner
    cleared, status unchanged) before the resume's move. A move that required the owner read
    changed nothing and resume() returned as if it had worked, the task suspended for good
    (found by review). A resume compares the status alone: the task still was resumable."""
    a = TaskManager(pg, poll_interval=0.05)
    a.register("echo", lambda ctx: ctx.input)
    a.start()
    b = TaskManager(_fresh_conn(), poll_interval=0.05)
    b.register("echo", lambda ctx: ctx.input)
    if resumer_started:
        b.start()
    try:
        tid = a.submit("echo", 1, delay=3600)
        a.suspend(tid)  # PENDING, no run_at, owned by a
        real = Tx.require

        def then_hand_back(self, task_id, *args):  # type: ignore[no-untyped-def]
            row = real(self, task_id, *args)
            if task_id == tid and a.state == "running":
                a.shutdown()  # commits on its own connection: owner NULL, still PENDING
            return row

        monkeypatch.setattr(Tx, "require", then_hand_back)
        b.resume(tid)
        monkeypatch.undo()
        if resumer_started:
            assert b.wait(tid, 30).status is S.SUCCESS
        else:
            assert b.get(tid).status is S.RESTORING  # for a started node to claim
    finally:
        a.shutdown()
        b.shutdown()


def test_a_suspend_during_a_wake_up_either_holds_the_task_or_says_it_could_not(pg, monkeypatch) -> None:
    """The wake-up read a due PENDING task; a suspend (run_at cleared, status unchanged) then
    committed and reported success; the wake-up's move, on the status and owner alone, ran the
    task anyway (found by review). The wake-up now reads the row FOR UPDATE: the suspend waits
    for it, then finds the task QUEUED and refuses."""
    ran: list[int] = []
    a = TaskManager(pg, poll_interval=3600)
    a.register("echo", lambda ctx: ran.append(ctx.task_id))
    a.start()
    operator = TaskManager(_fresh_conn())
    outcome: list[object] = []
    try:
        operator.register("echo", lambda ctx: None)
        tid = operator.submit("echo", delay=0.001)  # nobody's, PENDING: only a's wake-up below takes it
        threading.Event().wait(0.01)  # due
        real = Tx.row

        def then_suspend(self, task_id, **kw):  # type: ignore[no-untyped-def]
            row = real(self, task_id, **kw)
            if task_id == tid and not outcome and threading.current_thread() is waker:
                def suspend() -> None:
                    try:
                        operator.suspend(tid)
                        outcome.append("suspended")
                    except Exception as exc:  # noqa: BLE001 - checked below
                        outcome.append(exc)

                caller = threading.Thread(target=suspend)
                caller.start()
                caller.join(0.5)  # blocked on the row while the wake-up holds it (or done, unlocked)
                outcome.append(caller)
            return row

        waker = threading.current_thread()
        monkeypatch.setattr(Tx, "row", then_suspend)
        rooms(a).node.wake_due()
        monkeypatch.undo()
        caller = next(x for x in outcome if isinstance(x, threading.Thread))
        caller.join(30)
        said = [x for x in outcome if not isinstance(x, threading.Thread)]
        print("SAID", said, a.get(tid).status, ran, a.history(tid))
        task = a.wait(tid, 30) if said != ["suspended"] else a.get(tid)
        if said == ["suspended"]:
            assert task.status is S.PENDING and not ran, "suspend() said it held the task, and it ran"
        else:
            assert isinstance(said[0], InvalidTransition) and task.status is S.SUCCESS and ran == [tid]
    finally:
        a.shutdown()
        operator.shutdown()


def test_a_wake_up_never_closes_a_cycle_of_row_locks_with_another_nodes_batch(pg, monkeypatch) -> None:
    """Node a's wake-up read two due tasks: x (its own, locked first) and p (nobody's). Node b
    meanwhile woke p, and its next batch starts p (p locked) and cancels x (waiting for a's lock on
    x). Were a's wake-up to wait for p's lock, the two would wait for each other until PostgreSQL
    aborted one (found by review). It skips a row another transaction holds: no deadlock."""
    a = TaskManager(pg, poll_interval=3600)
    b = TaskManager(_fresh_conn(), poll_interval=3600)
    client = TaskManager(_fresh_conn())
    for m in (a, b, client):
        m.register("t", lambda ctx: None)
    a.start()
    b.start()
    try:
        monkeypatch.setattr(rooms(b).dispatcher, "dispatch", lambda tid: None)  # b's start of p: the batch below
        monkeypatch.setattr(rooms(a).executor, "call_at", lambda *args, **kw: None)  # a's wake-up: the one below
        x = a.submit("t", delay=0.05)  # a's own, due first
        p = client.submit("t", delay=0.1)  # nobody's, due second
        threading.Event().wait(0.3)
        deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        before = pg.execute_sql(deadlocks).fetchone()[0]

        def b_batch(tx: Tx) -> None:
            assert moves.start(tx, b.node, p) is not None  # QUEUED -> RUNNING: p locked
            tx.move(x, S.PENDING, S.CANCELLED, run_at=None)  # an operator's cancel of x: waits for a

        outcome: list[object] = []

        def node_b() -> None:
            rooms(b).node.wake_due()  # p: QUEUED, b's (committed)
            try:
                rooms(b).store.write(b_batch)
                outcome.append("ok")
            except Exception as exc:  # noqa: BLE001 - checked below
                outcome.append(exc)

        real = Tx.row
        waker = threading.current_thread()
        other: list[threading.Thread] = []

        def then_node_b(self, task_id, **kw):  # type: ignore[no-untyped-def]
            if task_id == p and not other and threading.current_thread() is waker:
                other.append(threading.Thread(target=node_b))
                other[0].start()
                other[0].join(0.5)  # b's batch now holds p and waits for x
            return real(self, task_id, **kw)

        monkeypatch.setattr(Tx, "row", then_node_b)
        rooms(a).node.wake_due()
        monkeypatch.undo()
        other[0].join(30)
        assert outcome == ["ok"]
        assert pg.execute_sql(deadlocks).fetchone()[0] == before
        # a's wake-up went through (x runs on a; the raw move of the cancel above found it QUEUED), and
        # b's start of p too
        assert (a.wait(x, 30).status, a.get(p).status) == (S.SUCCESS, S.RUNNING)
    finally:
        a.shutdown(wait=False)
        b.shutdown(wait=False)
        client.shutdown()


def test_a_due_task_held_by_another_transaction_is_woken_soon_after_without_spinning(pg, monkeypatch) -> None:
    """The wake-up skips a due row another transaction holds (SKIP LOCKED). It used to leave it to
    the next poll (seconds later), and with a full page of held rows to read the same page again at
    once, over and over, while they were held (found by review). It now looks again a moment later:
    one such look at a time (every poll that finds the row held started one more, a review of that
    fix found: hundreds of wake-ups a second), backing off while the row stays held."""
    import psycopg2

    a = TaskManager(pg, poll_interval=3600)  # no poll in the test's time: only the wake-ups below
    a.register("t", lambda ctx: "ran")
    monkeypatch.setattr(Node, "WAKE_BATCH", 1)  # one held row fills a page
    timed: list[tuple[float, Callable[[], None]]] = []
    a.start()
    node = rooms(a).node
    monkeypatch.setattr(rooms(a).executor, "call_at", lambda when, fn: timed.append((when, fn)))
    holder = psycopg2.connect(URL)
    try:
        tid = a.submit("t", delay=0.001)
        threading.Event().wait(0.01)  # due
        timed.clear()  # the submit's own timed wake-up
        holder.cursor().execute("SELECT id FROM taskmgr_task WHERE id = %s FOR UPDATE", (tid,))
        for _ in range(3):  # polls and timed wake-ups that find the row held
            waker = threading.Thread(target=node.wake_due)
            waker.start()
            waker.join(10)
            assert not waker.is_alive(), "the wake-up kept reading the rows it cannot take"
        assert a.get(tid).status is S.PENDING
        assert len(timed) == 1, "one look again at a time"
        (first, retry), now = timed.pop(), time.time()
        assert first <= now + Node.WAKE_RETRY
        retry()  # still held: one more, twice as far off
        assert len(timed) == 1 and timed[0][0] >= now + 2 * Node.WAKE_RETRY
        holder.rollback()  # the other transaction ends without changing the row
        timed.pop()[1]()
        assert a.wait(tid, 30).result_value == "ran"
        assert timed == [] and node.wake_retry_delay == Node.WAKE_RETRY
    finally:
        holder.close()
        a.shutdown()


def test_another_applications_task_table_on_postgresql_is_refused_untouched(pg) -> None:
    from taskmgr import StoreError

    pg.execute_sql("CREATE TABLE taskmgr_task (id BIGSERIAL PRIMARY KEY, title TEXT)")
    with pytest.raises(StoreError, match="is not a taskmgr database: table taskmgr_task lacks the columns graphspace"):
        Store(pg)
    assert sorted(t for t in pg.get_tables() if t.startswith("taskmgr")) == ["taskmgr_task"]


def test_a_read_only_store_on_postgresql_makes_nothing_and_writes_nothing(pg) -> None:
    from taskmgr import StoreError

    with pytest.raises(StoreError, match="is not a taskmgr database: it has no taskmgr_task table"):
        Store(pg, readonly=True)
    assert [t for t in pg.get_tables() if t.startswith("taskmgr")] == []
    Store(pg).close()
    store = Store(pg, readonly=True)
    try:
        assert store.select() == [] and store.threads == []
        with pytest.raises(StoreError, match="read-only"):
            store.register_node("n", 0)
    finally:
        store.close()
