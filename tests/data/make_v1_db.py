"""Build ``taskmgr-v1.db``: a task database as version 1 of the schema left it, after a crash.

Run it with the code of schema version 1 (commit c5930bc, the last before the
schema got a version), never with today's, which would write a newer schema::

    git worktree add /tmp/taskmgr-v1 c5930bc
    PYTHONPATH=/tmp/taskmgr-v1 python tests/data/make_v1_db.py tests/data/taskmgr-v1.db

It writes through that version's own ``Store`` and ``Tx`` (the verbs its
manager used), on a fake clock so that every time is the same at each run,
then adds by hand what the code no longer wrote: rows of the old
``taskmgr_history`` table, as versions before the history moved into the
task row wrote them. What it holds: tasks in every status a crash and the API
can leave, with progress, results and history, in two graphs; the unfinished
ones owned by a node that died (its row is still registered, on another host,
its heartbeat long past).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import sys

from taskmgr.status import TaskStatus as S
from taskmgr.store import Store

DEAD = "fixture-host:4242:0f0f0f0f"  # the node that died, owner of the unfinished tasks
T0 = 1_700_000_000.0  # the fake clock's start, seconds since the epoch (2023-11-14)


def main(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)
    ticks = itertools.count()
    store = Store(path, group_commit=False, clock=lambda: T0 + next(ticks))  # one second per batch
    try:
        build(store)
    finally:
        store.close()
    con = sqlite3.connect(path)
    try:
        with con:
            legacy_history(con)
            # the dead node: another host (no pid to check), its heartbeat long past
            con.execute("UPDATE taskmgr_node SET host = 'fixture-host', pid = 4242 WHERE node = ?", (DEAD,))
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal beside it
        con.execute("VACUUM")
    finally:
        con.close()


def task(store: Store, path: tuple[S, ...] = (S.NEW,), *, type: str = "fixture.echo", input: str | None = "1",
         graphspace: str = "DEFAULT", graph: str = "g", owner: str | None = None, **fields: object) -> int:
    row = {"graphspace": graphspace, "graph": graph, "type": type, "name": f"{type} job",
           "callable": f"fixtures.{type.split('.')[-1]}", "input": input, "owner": owner,
           "max_retries": 0, "retry_delay": 1.0, "run_at": None, "ran": 0, **fields}
    return store.write(lambda tx: tx.insert(row, path))


def move(store: Store, tid: int, *steps: S, **fields: object) -> None:
    for frm, to in itertools.pairwise(steps):
        last = to == steps[-1]
        assert store.write(lambda tx, frm=frm, to=to: tx.move(tid, frm, to, **(fields if last else {}))), (tid, frm, to)  # noqa: B023 - called at once


def build(store: Store) -> None:
    store.register_node(DEAD, int(T0 * 1000))
    # finished: results, errors, progress, retries
    ok = task(store, (S.NEW, S.QUEUED, S.RUNNING), owner=DEAD, ran=1)
    move(store, ok, S.RUNNING, S.SUCCESS, result='{"k":1}', progress=100)
    ok8 = task(store, (S.NEW, S.QUEUED, S.RUNNING), input='{"n":8}', owner=DEAD, ran=1)
    move(store, ok8, S.RUNNING, S.SUCCESS, result="8", progress=3)
    task(store, (S.NEW, S.QUEUED, S.RUNNING, S.SUCCESS), input="[]", result="[]")
    failed = task(store, (S.NEW, S.QUEUED, S.RUNNING), type="fixture.fail", owner=DEAD, ran=1, max_retries=1)
    move(store, failed, S.RUNNING, S.PENDING, result="ValueError: bad input", run_at=int(T0 * 1000) + 5000)
    move(store, failed, S.PENDING, S.RESTORING, S.QUEUED, S.RUNNING, retries=1, ran=1, result=None, run_at=None)
    move(store, failed, S.RUNNING, S.FAILED, result="ValueError: bad input", progress=7)
    cancelled = task(store)
    move(store, cancelled, S.NEW, S.CANCELLED)
    task(store, (S.NEW, S.QUEUED, S.RUNNING, S.CANCELLING, S.CANCELLED), progress=2)
    # unfinished, nobody's: an idle manager's submit, a hand-back at shutdown, a suspended one
    task(store, (S.NEW,), input='{"who":"idle"}')
    task(store, (S.NEW, S.QUEUED, S.RESTORING), input='"handed back"')
    task(store, (S.NEW, S.PENDING), input='"suspended"')
    # unfinished, the dead node's: every status it could leave behind
    task(store, (S.NEW, S.SCHEDULING), owner=DEAD, input='"scheduling"')
    task(store, (S.NEW, S.SCHEDULING, S.SCHEDULED), owner=DEAD, input='"scheduled"')
    task(store, (S.NEW, S.QUEUED), owner=DEAD, input='"queued"')
    task(store, (S.NEW, S.QUEUED), owner=DEAD, input='"queued in another graph"', graphspace="SPACE2", graph="h")
    task(store, (S.NEW, S.PENDING), owner=DEAD, input='"delayed"', run_at=int(T0 * 1000) + 60_000)
    task(store, (S.NEW, S.PENDING), owner=DEAD, input='"suspended, owned"')
    running = task(store, (S.NEW, S.QUEUED, S.RUNNING), owner=DEAD, ran=1, input='"running"')
    assert store.write(lambda tx: tx.update(running, (S.RUNNING,), progress=40))
    restoring = task(store, (S.NEW, S.QUEUED, S.RUNNING), owner=DEAD, ran=1, input='"interrupted"')
    move(store, restoring, S.RUNNING, S.RESTORING, progress=5, owner=None)  # handed back by a shutdown
    task(store, (S.NEW, S.QUEUED, S.RUNNING, S.CANCELLING), owner=DEAD, ran=1, progress=10, input='"cancelling"')
    retrying = task(store, (S.NEW, S.QUEUED, S.RUNNING), type="fixture.fail", owner=DEAD, ran=1, max_retries=2)
    move(store, retrying, S.RUNNING, S.PENDING, result="ValueError: bad input", run_at=int(T0 * 1000) + 2000)
    # UNKNOWN: a type the restoring node lacked (any node that registers it brings it back), and a
    # damaged record (only resume() does)
    task(store, (S.NEW, S.QUEUED, S.UNKNOWN), input='"unregistered"',
         result="UnknownTaskType: task type 'fixture.echo' is not registered in the process that restored "
                "it; register it and call resume() on the task (or restart)")
    task(store, (S.NEW, S.UNKNOWN), input="not json", result="InvalidInput: the stored task_input is not valid JSON")
    # in another graph, finished
    task(store, (S.NEW, S.QUEUED, S.RUNNING, S.SUCCESS), graphspace="SPACE2", graph="h", result='"done"')


def legacy_history(con: sqlite3.Connection) -> None:
    """What versions before the history moved into the row wrote: rows of ``taskmgr_history``.

    Task 1 was made and started by such a version: its first changes are in the table alone, its
    finish in the row, dated the same as the table's last row (a tie: the table's comes first).
    Task 2 ran next to a node of that version (a rolling upgrade): its start is a table row dated
    between the row's entries. Task 3's history is the table's alone.
    """
    def entries(*moves: tuple[str | None, str, int]) -> str:
        return "".join(json.dumps(list(m), separators=(",", ":")) + "\n" for m in moves)

    def rows(task_id: int, *moves: tuple[str | None, str, int]) -> None:
        con.executemany("INSERT INTO taskmgr_history (task_id, from_status, to_status, at) VALUES (?, ?, ?, ?)",
                        [(task_id, *m) for m in moves])

    def created(task_id: int) -> int:
        return int(con.execute("SELECT created FROM taskmgr_task WHERE id = ?", (task_id,)).fetchone()[0])

    a, b, c = created(1), created(2), created(3)
    rows(1, (None, "new", a), ("new", "queued", a + 1), ("queued", "running", a + 2))
    con.execute("UPDATE taskmgr_task SET history = ? WHERE id = 1", (entries(("running", "success", a + 2)),))
    con.execute("UPDATE taskmgr_task SET history = ? WHERE id = 2",
                (entries((None, "new", b), ("new", "queued", b), ("running", "success", b + 2000)),))
    rows(2, ("queued", "running", b + 1000))
    con.execute("UPDATE taskmgr_task SET history = NULL WHERE id = 3")
    rows(3, (None, "new", c), ("new", "queued", c + 1), ("queued", "running", c + 2), ("running", "success", c + 3))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                            "taskmgr-v1.db"))
