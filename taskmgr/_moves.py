"""Every status decision: plain functions over a store transaction.

Owns: which move a task makes, from what, to what, for whom. Each function
takes a :class:`~taskmgr.store.Tx` and runs inside the store's write
transaction (on the thread leading the commit); it reads rows there and
changes them only through the transaction's compare-and-set verbs
(``move``, ``move_path``, ``move_returning``, ``update``, ``insert_many``,
``delete``). This module is their only caller in the manager.

Invariants:

* every status change is one the transition table allows, made as a
  compare-and-set on the status read (``Tx.move`` refuses any other);
* a write for a run, and a take-over, also requires the owner it read
  (``held_by``): a node taken for dead cannot overwrite the run that
  replaced its own, and a take-over keeps to the state it was decided on;
* a node queues only what it can run (:attr:`Actor.types`); anything else it
  touches is left *unowned and runnable* (NEW, RESTORING or PENDING with no
  owner) for a node that registers its type.

No state, no threads of its own, no I/O beyond the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._codec import decode_input
from .errors import CannotCancel, IncompleteTask, InvalidArgument, InvalidTransition, UnknownTaskType
from .status import NOT_STARTED, PREDECESSORS, TaskStatus
from .store import Tx, held

log = logging.getLogger(__name__)

S = TaskStatus
#: what suspend() moves to PENDING: the table's predecessors of PENDING but RUNNING (a running
#: task goes PENDING only for its own retry, never from outside)
SUSPENDABLE = PREDECESSORS[S.PENDING] - {S.RUNNING}
#: statuses a crashed node may leave that a take-over acts on
RESTORABLE = frozenset((S.QUEUED, S.RUNNING, S.SCHEDULING, S.SCHEDULED, S.RESTORING, S.CANCELLING, S.NEW,
                        S.PENDING))
#: the statuses a new task goes through in its submit's transaction
PATH_NEW = (S.NEW,)
PATH_PENDING = (S.NEW, S.PENDING)
PATH_QUEUED = (S.NEW, S.QUEUED)
PATH_RUNNING = (S.NEW, S.QUEUED, S.RUNNING)
#: how many times a control reads a task again after another node's transaction moved it between
#: its read and its compare-and-set (a shared PostgreSQL reads committed rows; SQLite's write lock
#: keeps others out of a whole transaction)
RACES = 8
#: the result of an UNKNOWN task left by an earlier version for want of a registered type
UNREGISTERED = "UnknownTaskType: "


@dataclass(frozen=True)
class Actor:
    """Who makes a move: a node (``started``) or an idle manager, and the task types it runs."""

    node: str
    types: Collection[str]
    started: bool
    max_restores: int = 3


@dataclass
class Outcome:
    """How a run ended: SUCCESS, FAILED or CANCELLED; PENDING for a retry at ``run_at``;
    RESTORING when a shutdown interrupted it (handed back to run again)."""

    status: TaskStatus
    result: str | None
    progress: int
    run_at: int | None = field(default=None)


# ------------------------------------------------------------------ creation and runs
def insert(tx: Tx, rows: list[dict[str, Any]], direct: int, pending: bool, owned: bool,
           stopping: Callable[[], bool]) -> tuple[list[int], bool]:
    """A submit's rows: PENDING (a delay), NEW and unowned (an idle manager), or owned by the
    submitting node, the first ``direct`` straight to RUNNING (a worker is reserved for each) and
    the rest QUEUED. Returns the ids, and whether the tasks are the node's to run.

    ``stopping`` is read here, in the transaction: a shutdown hands back what its node owns in a
    transaction of its own, and tasks written as the node's after it would never run. Once it
    says so, the rows are written as an idle manager writes them, for any node to claim.
    """
    if owned and stopping():
        owned = False
        for row in rows:
            row["owner"], row["ran"] = None, 0
    if pending:
        return tx.insert_many(rows, PATH_PENDING), owned
    if not owned:
        return tx.insert_many(rows), owned
    if direct == len(rows):
        return tx.insert_many(rows, PATH_RUNNING), owned
    ids = tx.insert_many(rows[:direct], PATH_RUNNING) if direct else []
    return ids + tx.insert_many(rows[direct:], PATH_QUEUED), owned


def start(tx: Tx, node: str, task_id: int) -> dict[str, Any] | None:
    """QUEUED -> RUNNING on ``node``; the row to run, or None when the task is no longer queued
    there (cancelled, suspended, deleted, or taken over)."""
    return tx.move_returning(task_id, S.QUEUED, S.RUNNING, held_by=node, ran=1)


def start_queued(tx: Tx, node: str, task_id: int) -> bool:
    """QUEUED -> RUNNING on ``node``, without reading the row back (its caller has it)."""
    return tx.move(task_id, S.QUEUED, S.RUNNING, held_by=node, ran=1)


def save_progress(tx: Tx, node: str, progress: Sequence[tuple[int, int]]) -> None:
    """Record the progress of runs of ``node``."""
    for task_id, value in progress:
        tx.update(task_id, (S.RUNNING, S.CANCELLING), held_by=node, progress=value, updated=tx.now)


def finish(tx: Tx, node: str, task_id: int, outcome: Outcome) -> bool:
    """Record a run's outcome; False when the record is gone or no longer this node's run."""
    if _record_outcome(tx, node, task_id, outcome):
        return True
    row = tx.row(task_id)  # only on this rare path: say why, unless the record was deleted (as asked)
    if row is not None and row["owner"] != node:
        log.warning("the outcome of task %d (%s) on this node (%s) is dropped: the task is now %s and %s; "
                    "another node took it over after this one missed its lease",
                    task_id, outcome.status.name, node, str(row["status"]).upper(),
                    f"owned by {row['owner']}" if row["owner"] else "owned by no node")
    return False


def _record_outcome(tx: Tx, node: str, task_id: int, outcome: Outcome) -> bool:
    fields: dict[str, Any] = {"result": outcome.result, "progress": outcome.progress}
    target = outcome.status
    if target is S.RESTORING:  # interrupted by a shutdown: handed back, to run again (a re-run: ran stays 1)
        if tx.move(task_id, S.RUNNING, S.RESTORING, held_by=node, owner=None, **fields):
            return True
        return tx.move(task_id, S.CANCELLING, S.CANCELLED, held_by=node, **fields)
    if target is S.PENDING:
        if tx.move(task_id, S.RUNNING, S.PENDING, held_by=node, run_at=outcome.run_at, **fields):
            return True
        target = S.FAILED  # a cancel came first: no retry for a task being cancelled
    elif target is S.CANCELLED:
        # the callable obeyed a cancel; the row may still say RUNNING only if the cancel was not durable
        tx.move(task_id, S.RUNNING, S.CANCELLING, held_by=node)
        return tx.move(task_id, S.CANCELLING, S.CANCELLED, held_by=node, **fields)
    if tx.move(task_id, S.RUNNING, target, held_by=node, **fields):
        return True
    return tx.move(task_id, S.CANCELLING, target, held_by=node, **fields)


# ------------------------------------------------------------------ controls
def cancel(tx: Tx, node: str, task_id: int, graphspace: str | None, graph: str | None) -> bool:
    """Not started: CANCELLED. RUNNING: CANCELLING. True when it is now CANCELLING on ``node``.

    :raises CannotCancel: for a finished or CANCELLING task.
    """
    st: TaskStatus | None = None
    for _ in range(RACES):
        row = tx.require(task_id, graphspace, graph)
        st = damaged_to_unknown(tx, row)
        if st in NOT_STARTED:
            if tx.move(task_id, st, S.CANCELLED, run_at=None):
                return False
        elif st is S.RUNNING:
            if tx.move(task_id, st, S.CANCELLING):
                return bool(row["owner"] == node)
        else:
            raise CannotCancel(task_id, st)
        # lost a race with another node's transaction: read it again
    raise InvalidTransition(task_id, st, S.CANCELLED)


def delete(tx: Tx, task_id: int, force: bool, graphspace: str | None, graph: str | None) -> TaskStatus:
    """Delete the record; an unfinished one only with ``force``. Returns the status it had."""
    row = tx.require(task_id, graphspace, graph)
    st = status_of(row)
    if (st is None or not st.terminal) and not force:
        raise IncompleteTask(task_id, st or row["status"])
    tx.delete(task_id)
    return st or S.UNKNOWN


def suspend(tx: Tx, task_id: int, graphspace: str | None, graph: str | None) -> None:
    """Hold a task that has not started in PENDING (a PENDING one stays, its wake-up cleared)."""
    st: TaskStatus | None = None
    row: dict[str, Any] = {}
    for _ in range(RACES):
        row = tx.require(task_id, graphspace, graph)
        st = status_of(row)
        if st is S.PENDING:
            if tx.update(task_id, (S.PENDING,), run_at=None, updated=tx.now):
                return
        elif st not in SUSPENDABLE:
            break
        elif tx.move(task_id, st, S.PENDING, run_at=None):
            return
        # lost a race with another node's transaction: read the row again
    raise InvalidTransition(
        task_id, st or row["status"], S.PENDING,
        f"Can't suspend task '{task_id}' in status {str(row['status']).upper()}: only a task that has not "
        "started (NEW, SCHEDULING, SCHEDULED, QUEUED, RESTORING) can be suspended; cancel a running one",
    )


def resume(tx: Tx, actor: Actor, task_id: int, graphspace: str | None, graph: str | None,
           registered: Mapping[str, Any]) -> bool:
    """PENDING or UNKNOWN -> RESTORING, and QUEUED when ``actor`` runs it. True: dispatch it.

    :raises UnknownTaskType: when a started node, or anyone resuming an UNKNOWN task, does not
        register its type (refused rather than left for a node that may never come).
    """
    row = tx.require(task_id, graphspace, graph)
    st = damaged_to_unknown(tx, row)
    if st not in (S.PENDING, S.UNKNOWN):
        raise InvalidTransition(
            task_id, st, S.RESTORING,
            f"Can't resume task '{task_id}' in status {st.name}: only a PENDING or UNKNOWN task can be resumed",
        )
    if (actor.started or st is S.UNKNOWN) and row["type"] not in registered:
        raise UnknownTaskType(str(row["type"]), list(registered))
    if st is S.UNKNOWN:
        decode_input(row)
    # on the status alone: what may change the owner meanwhile (a hand-back, a take-over of a
    # dead node's PENDING task) leaves the task as resumable as it was read
    return requeue(tx, actor, row, st, fenced=False)


# ------------------------------------------------------------------ the node's duties
def requeue(tx: Tx, actor: Actor, row: dict[str, Any], st: TaskStatus, *, fenced: bool = True,
            **extra: Any) -> bool:
    """Bring a task from ``st`` back to run, by the table's paths. True: it is QUEUED here.

    Queued here when ``actor`` is a started node that registers its type; otherwise left
    unowned and runnable (NEW, or RESTORING) for a node that does. QUEUED, PENDING, RUNNING and
    UNKNOWN go through RESTORING; NEW and SCHEDULED straight to QUEUED; SCHEDULING back to NEW
    first (the table has no SCHEDULING -> RESTORING).
    """
    tid = row["id"]
    fence = held(row["owner"]) if fenced else None
    fields: dict[str, Any] = {"run_at": None, **extra}
    if row["ran"]:
        fields.update(retries=row["retries"] + 1, ran=0)
    here = actor.started and row["type"] in actor.types
    if here and decoded_or_bad(row) is BAD:
        return mark_unknown(tx, row, st, "InvalidInput: the stored task_input cannot be decoded", **fields)
    owner = actor.node if here else None
    if st is S.SCHEDULING:
        if not tx.move(tid, st, S.NEW, held_by=fence):
            return False
        st = S.NEW
    if st in (S.NEW, S.SCHEDULED):
        if here:
            return tx.move(tid, st, S.QUEUED, held_by=fence, owner=owner, **fields)
        if st is S.SCHEDULED:
            tx.move_path(tid, (S.SCHEDULED, S.SCHEDULING, S.NEW), held_by=fence, owner=None, **fields)
        else:
            tx.update(tid, (S.NEW,), held_by=fence, owner=None, **fields)
        return False
    if st is S.RESTORING:
        if here:  # the owner and the move in one statement: no unowned QUEUED in between
            return tx.move(tid, S.RESTORING, S.QUEUED, held_by=fence, owner=owner, result=None, **fields)
        tx.update(tid, (S.RESTORING,), held_by=fence, owner=None, **fields)
        return False
    if here:  # through RESTORING to QUEUED in one statement
        return tx.move_path(tid, (st, S.RESTORING, S.QUEUED), held_by=fence, owner=owner, result=None, **fields)
    tx.move(tid, st, S.RESTORING, held_by=fence, owner=None, **fields)
    return False


def take_over(tx: Tx, actor: Actor, ids: Sequence[int]) -> list[int]:
    """Take over the tasks among ``ids`` that no registered node owns; returns those queued here.

    Who is registered is read here, in the transaction, after the rows: a node that registered
    since the ids were read is alive. Every write requires the owner read. A task of a type this
    node does not run is left unowned and runnable (never UNKNOWN) for a node that does.
    """
    queued: list[int] = []
    rows = tx.rows(ids)
    live = tx.nodes() | {actor.node}
    for tid in ids:
        row = rows.get(tid)
        if row is None or (row["owner"] is not None and row["owner"] in live):
            continue  # gone, or owned by a registered node
        mine = row["type"] in actor.types
        if row["owner"] is None and not mine:
            continue  # nobody's already, and not for this node: a node that registers its type claims it
        st = damaged_to_unknown(tx, row)
        fence = held(row["owner"])
        if st is S.PENDING:
            tx.update(tid, (S.PENDING,), held_by=fence, owner=actor.node if mine else None)
        elif st is S.CANCELLING:
            tx.move(tid, st, S.CANCELLED, held_by=fence)
        elif st in RESTORABLE or st is S.UNKNOWN:
            if st is S.UNKNOWN and not (str(row["result"] or "").startswith(UNREGISTERED) and mine):
                continue  # only resume() brings back a damaged record
            if st is S.RUNNING and row["restores"] >= actor.max_restores:
                tx.move(tid, st, S.FAILED, held_by=fence,
                        result=f"RestoreLimit: the task was interrupted while running {row['restores'] + 1} "
                        f"times (its process died each time); gave up after max_restores={actor.max_restores}")
                continue
            extra: dict[str, Any] = {}
            if st is S.RUNNING:
                extra["restores"] = row["restores"] + 1
                row = dict(row, ran=1)
            if requeue(tx, actor, row, st, **extra):
                queued.append(tid)
    return queued


def claim(tx: Tx, actor: Actor, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Queue here the unowned NEW or RESTORING tasks read as ``rows``, if still so; their ids."""
    out = []
    for row in rows:
        fresh = tx.row(row["id"])
        if fresh is None or fresh["owner"] is not None or fresh["status"] != row["status"]:
            continue
        if requeue(tx, actor, fresh, S(fresh["status"])):
            out.append(fresh["id"])
    return out


def wake(tx: Tx, actor: Actor, ids: Sequence[int], now: int) -> tuple[list[int], bool]:
    """Requeue the due PENDING tasks among ``ids``; the tasks queued, and whether a due one was
    held by another transaction (skipped: waiting for it could close a cycle of locks)."""
    out, held_elsewhere = [], False
    for tid in ids:
        row = tx.row(tid, lock=True)
        if row is None:
            held_elsewhere = held_elsewhere or tx.row(tid) is not None  # or deleted
        elif row["status"] == S.PENDING.value and row["run_at"] is not None and row["run_at"] <= now:
            if requeue(tx, actor, row, S.PENDING):
                out.append(tid)
    return out, held_elsewhere


def release(tx: Tx, node: str, busy: Collection[int]) -> int:
    """Hand back what ``node`` owns but is not running (``busy``): queued tasks, tasks committed
    RUNNING whose callable never started, and waiting PENDING ones; returns how many of the
    first two."""
    moved = 0
    for tid in tx.owned_ids(node, S.QUEUED):
        if tid not in busy:
            moved += tx.move(tid, S.QUEUED, S.RESTORING, held_by=node, owner=None)
    for tid in tx.owned_ids(node, S.RUNNING):
        if tid not in busy:
            moved += tx.move(tid, S.RUNNING, S.RESTORING, held_by=node, owner=None, ran=0)
    tx.disown_pending(node)
    return moved


# ------------------------------------------------------------------ rows
BAD = object()


def decoded_or_bad(row: dict[str, Any]) -> Any:
    """The row's decoded input, or :data:`BAD`."""
    try:
        return decode_input(row)
    except InvalidArgument:
        return BAD


def status_of(row: dict[str, Any]) -> TaskStatus | None:
    """The row's status, or None for a value that is not one of the twelve."""
    try:
        return TaskStatus(row["status"])
    except ValueError:
        return None


def damaged_to_unknown(tx: Tx, row: dict[str, Any]) -> TaskStatus:
    """The row's status; a status that is not one of the twelve is first recorded as UNKNOWN."""
    st = status_of(row)
    if st is None:
        raw = row["status"]
        tx.move_from_stored(row["id"], raw, S.UNKNOWN, result=f"DamagedRecord: stored status {raw!r} is not valid")
        row["status"] = S.UNKNOWN.value
        return S.UNKNOWN
    return st


def mark_unknown(tx: Tx, row: dict[str, Any], st: TaskStatus, why: str, **fields: Any) -> bool:
    """UNKNOWN, with the reason, and nobody's: only :func:`resume` brings it back."""
    fence = held(row["owner"])
    if st is not S.UNKNOWN:
        tx.move(row["id"], st, S.UNKNOWN, held_by=fence, **{**fields, "owner": None, "result": why})
    else:
        tx.update(row["id"], (S.UNKNOWN,), held_by=fence, **{**fields, "owner": None, "result": why})
    return False

