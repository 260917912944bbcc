"""The store's named queries (what the manager asks by name, not by peewee conditions) and the node
lease: heartbeats by the database's clock, each node judged by its own lease, the pid shortcut
only within one PID namespace and boot, and removals that re-check."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from taskmgr import InvalidArgument, TaskStatus
from taskmgr.store import Store, process_identity

S = TaskStatus

ROW = {"graphspace": "DEFAULT", "graph": "g", "type": "t", "name": "n", "callable": "m.f"}


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "s.db"), clock=lambda: 1_000_000_000.0)  # a fake clock: liveness must not follow it
    yield s
    s.close()


def _task(store: Store, status: S, owner: str | None = None, type: str = "t", run_at: int | None = None) -> int:
    def op(tx):
        tid = tx.insert(dict(ROW, type=type, owner=owner, run_at=run_at))
        p = store.db.param
        tx.execute(f"UPDATE taskmgr_task SET status = {p} WHERE id = {p}", (status.value, tid))
        return tid

    return store.write(op)


def _sql(store: Store, sql: str, params=()) -> None:
    store.write(lambda tx: tx.execute(sql, params))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _node_row(store: Store, node: str) -> dict:
    N = store.Node
    return N.select().where(N.node == node).dicts().get()


# ------------------------------------------------------------------------------------ named queries
def test_owned_ids_are_the_nodes_tasks_in_that_status_ascending(store: Store) -> None:
    a1 = _task(store, S.QUEUED, "a")
    _task(store, S.QUEUED, "b")
    _task(store, S.RUNNING, "a")
    _task(store, S.QUEUED, None)
    a2 = _task(store, S.QUEUED, "a")
    assert store.owned_ids("a", S.QUEUED) == [a1, a2]
    assert store.owned_ids("c", S.QUEUED) == []


def test_orphan_ids_are_unfinished_tasks_of_nobody_or_of_nodes_not_alive(store: Store) -> None:
    statuses = [S.NEW, S.QUEUED, S.RUNNING, S.SUCCESS, S.FAILED, S.CANCELLED, S.CANCELLING, S.UNKNOWN, S.PENDING]
    made = [(_task(store, st, owner), st, owner) for owner in (None, "live", "dead") for st in statuses]
    want = [tid for tid, st, owner in made if not st.terminal and owner != "live"]
    assert store.orphan_ids({"live"}, 0, 1000) == want
    assert store.orphan_ids({"live"}, want[1], 2) == want[2:4]  # after, limit
    assert store.orphan_ids((), 0, 1000) == [tid for tid, st, _ in made if not st.terminal]  # nobody alive
    assert store.orphan_ids({"live", "dead"}, 0, 1000) == [tid for tid, st, owner in made
                                                          if not st.terminal and owner is None]


def test_due_pending_ids_are_the_nodes_own_or_unowned_of_its_types_soonest_first(store: Store) -> None:
    late = _task(store, S.PENDING, "me", run_at=300)
    early = _task(store, S.PENDING, None, type="mine", run_at=100)
    _task(store, S.PENDING, None, type="foreign", run_at=50)  # nobody's, a type this node lacks
    _task(store, S.PENDING, "other", type="mine", run_at=50)  # another node's
    _task(store, S.PENDING, "me", run_at=None)  # suspended by request: never due
    _task(store, S.PENDING, "me", run_at=900)  # not yet
    _task(store, S.QUEUED, "me", run_at=10)  # not pending
    assert store.due_pending_ids("me", {"mine"}, 500, 10) == [early, late]
    assert store.due_pending_ids("me", {"mine"}, 500, 1) == [early]
    assert store.due_pending_ids("me", (), 500, 10) == [late]  # no types: its own only


def test_due_pending_ids_can_read_through_the_partial_index(store: Store) -> None:
    """The statement says ``status = 'pending'`` literally, the partial index's own condition:
    SQLite refuses ``INDEXED BY`` an index a statement cannot use."""
    conn = store.db.connection()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        store.due_pending_ids("me", {"a", "b"}, 500, 10)
    finally:
        conn.set_trace_callback(None)
    (sql,) = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert "\"status\" = 'pending'" in sql
    forced = sql.replace('FROM "taskmgr_task"', 'FROM "taskmgr_task" INDEXED BY taskmgr_task_pending_run_at')
    plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + forced))
    assert "taskmgr_task_pending_run_at" in plan, plan


def test_claimable_rows_are_unowned_new_or_restoring_tasks_of_the_types_as_rows(store: Store) -> None:
    new = _task(store, S.NEW, None, type="a")
    restoring = _task(store, S.RESTORING, None, type="b")
    _task(store, S.NEW, "someone", type="a")
    _task(store, S.QUEUED, None, type="a")
    _task(store, S.NEW, None, type="c")
    rows = store.claimable_rows({"a", "b"}, 10)
    assert [r["id"] for r in rows] == [new, restoring]
    assert rows[0] == store.write(lambda tx: tx.row(new))  # the same dict a transaction reads
    assert store.claimable_rows({"a", "b"}, 1) == rows[:1]
    assert store.claimable_rows((), 10) == []


def test_cancelling_ids_say_which_of_these_are_cancelling(store: Store) -> None:
    ids = [_task(store, S.CANCELLING if i % 3 == 0 else S.RUNNING) for i in range(1100)]
    want = {tid for i, tid in enumerate(ids) if i % 3 == 0}
    assert store.cancelling_ids(ids) == want  # past one statement's ids
    assert store.cancelling_ids([ids[1], 10**9]) == set()
    assert store.cancelling_ids([]) == set()


def test_disown_pending_leaves_the_nodes_pending_tasks_to_anyone(store: Store) -> None:
    mine = _task(store, S.PENDING, "me", run_at=5)
    theirs = _task(store, S.PENDING, "them", run_at=5)
    queued = _task(store, S.QUEUED, "me")
    before = store.get(mine)
    assert store.write(lambda tx: tx.disown_pending("me")) == 1
    rows = store.write(lambda tx: tx.rows([mine, theirs, queued]))
    assert [rows[t]["owner"] for t in (mine, theirs, queued)] == [None, "them", "me"]
    assert store.get(mine) == before and rows[mine]["run_at"] == 5  # nothing else changes


# ------------------------------------------------------------------------------------------ identity
def test_the_process_identity_is_the_boot_and_the_pid_namespace() -> None:
    ident = process_identity()
    if not os.path.exists("/proc/self/ns/pid"):
        assert ident == ""
        return
    boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    assert ident == f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"


def test_a_process_in_another_pid_namespace_has_another_identity() -> None:
    unshare = shutil.which("unshare")
    if unshare is None or not process_identity():
        pytest.skip("no unshare(1) or no /proc here")
    code = "from taskmgr.store import process_identity; print(process_identity())"
    run = subprocess.run([unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30)
    if run.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {run.stderr.strip()[:200]}")
    other = run.stdout.strip()
    assert other and other != process_identity()
    assert other.split(":")[0] == process_identity().split(":")[0]  # the same boot


# ------------------------------------------------------------------------------------------ the lease
def check_the_node_lease(store: Store, other: Store) -> None:
    """Registration, renewal and reaping by the database's clock and each node's own lease. ``other``
    is a second connection to the same database (another process's store). Also run on PostgreSQL."""
    before = int(time.time() * 1000)
    store.register_node("long", 1, lease=3600.0)
    store.register_node("short", 2, lease=0.5)
    row = _node_row(store, "long")
    after = int(time.time() * 1000)
    assert row["lease_ms"] == 3_600_000 and row["identity"] == process_identity() and row["started"] == 1
    assert before - 1000 <= row["heartbeat"] <= after + 1000  # the database's clock, not the store's fake one
    assert (row["host"], row["pid"]) == (socket.gethostname(), os.getpid())
    time.sleep(0.7)
    # a reaper passing a short timeout judges each node by its own lease
    alive, dead = other.reap_nodes(100)
    assert (alive, dead) == ({"long"}, ["short"])
    assert [r.node for r in store.Node.select()] == ["long"]
    # a heartbeat renews by the database's clock; an unregistered node is told so
    _sql(store, "UPDATE taskmgr_node SET heartbeat = heartbeat - 7200000")
    assert store.heartbeat("long") and not store.heartbeat("short")
    assert other.reap_nodes(100) == ({"long"}, [])
    # a row of an older version has no lease: the reaper's timeout judges it, else 30 s
    store.register_node("old", 3)
    _sql(store, "UPDATE taskmgr_node SET lease_ms = NULL, identity = NULL, heartbeat = heartbeat - 10000 "
         "WHERE node = 'old'")
    assert other.reap_nodes() == ({"long", "old"}, [])
    assert other.reap_nodes(5000) == ({"long"}, ["old"])
    # a renewal between the reaper's read and its delete keeps the node
    store.register_node("late", 4, lease=1.0)
    _sql(store, "UPDATE taskmgr_node SET heartbeat = heartbeat - 60000 WHERE node = 'late'")
    real_write = other.write

    def renewed_first(fn, *args, **kwargs):
        assert store.heartbeat("late")  # the node renews just as the reaper deletes
        return real_write(fn, *args, **kwargs)

    other.write = renewed_first  # type: ignore[method-assign]
    try:
        assert other.reap_nodes(100) == ({"long", "late"}, [])
    finally:
        del other.write
    assert {r.node for r in store.Node.select()} == {"long", "late"}


def test_nodes_are_judged_by_their_own_lease_on_the_databases_clock(store: Store, tmp_path) -> None:
    other = Store(store.db.database, clock=lambda: 5.0)  # another process, its clock far off
    try:
        check_the_node_lease(store, other)
    finally:
        other.close()


def test_a_lease_must_be_a_positive_finite_number_of_seconds(store: Store) -> None:
    for bad in (0, -1, float("inf"), float("nan"), "5", True, None):
        with pytest.raises(InvalidArgument, match="lease"):
            store.register_node("n", 0, lease=bad)
    assert list(store.Node.select()) == []


def check_the_pid_shortcut(store: Store) -> None:
    """A node of this host whose process is gone is dead at once, but only when its identity is
    this process's: the same pid in another PID namespace (a container on this host network) or
    after a reboot is another process. Also run on PostgreSQL."""
    gone = _dead_pid()
    for name, identity in (("same", process_identity()), ("container", "other-boot:4026532000"), ("unknown", "")):
        store.register_node(name, 0, lease=3600.0, identity=identity)
    _sql(store, f"UPDATE taskmgr_node SET pid = {gone}")
    alive, dead = store.reap_nodes(100)
    if process_identity():
        assert (alive, dead) == ({"container", "unknown"}, ["same"])
    else:  # nothing proves a process here is of the same namespace: no shortcut at all
        assert (alive, dead) == ({"same", "container", "unknown"}, [])
    # another host: never by pid
    store.register_node("elsewhere", 0, lease=3600.0)
    _sql(store, f"UPDATE taskmgr_node SET pid = {gone}, host = 'another-host' WHERE node = 'elsewhere'")
    assert "elsewhere" in store.reap_nodes(100)[0]


def test_the_pid_shortcut_applies_only_within_this_pid_namespace_and_boot(store: Store) -> None:
    check_the_pid_shortcut(store)


def test_a_node_that_renews_between_the_pid_check_and_the_delete_stays(store: Store, tmp_path) -> None:
    if not process_identity():
        pytest.skip("no process identity here: the pid shortcut never applies")
    other = Store(store.db.database)
    try:
        store.register_node("n", 0, lease=3600.0)
        _sql(store, "UPDATE taskmgr_node SET pid = ?, heartbeat = heartbeat - 5000", (_dead_pid(),))
        real_write = other.write

        def renewed_first(fn, *args, **kwargs):
            assert store.heartbeat("n")
            return real_write(fn, *args, **kwargs)

        other.write = renewed_first  # type: ignore[method-assign]
        assert other.reap_nodes() == ({"n"}, [])
        assert [r.node for r in store.Node.select()] == ["n"]
    finally:
        other.close()
