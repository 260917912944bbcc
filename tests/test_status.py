"""The transition table: all 144 (from, to) pairs against the table and against a real store."""

from __future__ import annotations

import itertools

import pytest

from taskmgr import PREDECESSORS, TERMINAL, TRANSITIONS, InvalidStatus, InvalidTransition, TaskStatus, can_move
from taskmgr.store import Store

S = TaskStatus

# The contract's table, written out a second time on purpose: the module's table is checked against it.
CONTRACT = {
    "NEW": "SCHEDULING, QUEUED, PENDING, CANCELLED, FAILED, UNKNOWN",
    "SCHEDULING": "SCHEDULED, NEW, PENDING, CANCELLED, FAILED, UNKNOWN",
    "SCHEDULED": "QUEUED, SCHEDULING, PENDING, CANCELLED, FAILED, UNKNOWN",
    "QUEUED": "RUNNING, PENDING, RESTORING, CANCELLED, FAILED, UNKNOWN",
    "PENDING": "RESTORING, CANCELLED, FAILED, UNKNOWN",
    "RESTORING": "QUEUED, SCHEDULING, PENDING, CANCELLED, FAILED, UNKNOWN",
    "RUNNING": "SUCCESS, FAILED, CANCELLING, PENDING, RESTORING, UNKNOWN",
    "CANCELLING": "CANCELLED, SUCCESS, FAILED, UNKNOWN",
    "UNKNOWN": "RESTORING, CANCELLED, FAILED",
    "SUCCESS": "",
    "CANCELLED": "",
    "FAILED": "",
}
ALLOWED = {(S[f], S[t.strip()]) for f, tos in CONTRACT.items() for t in tos.split(",") if t.strip()}
PAIRS = list(itertools.product(S, S))


def test_there_are_twelve_statuses_with_lower_case_wire_names() -> None:
    assert len(S) == 12
    assert [s.value for s in S] == [s.name.lower() for s in S]


def test_the_table_is_exactly_the_contracts() -> None:
    assert {(f, t) for f, tos in TRANSITIONS.items() for t in tos} == ALLOWED
    assert set(TRANSITIONS) == set(S)


def test_terminal_statuses_are_derived_from_the_table() -> None:
    assert TERMINAL == {S.SUCCESS, S.CANCELLED, S.FAILED}
    assert all(s.terminal == (s in TERMINAL) for s in S)


def test_predecessors_invert_the_table() -> None:
    for to in S:
        assert PREDECESSORS[to] == {f for f in S if (f, to) in ALLOWED}


def test_the_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[S.NEW] = frozenset()  # type: ignore[index]


@pytest.mark.parametrize("text", ["SUCCESS", "success", "Success"])
def test_parsing_ignores_case(text: str) -> None:
    assert S.parse(text) is S.SUCCESS


@pytest.mark.parametrize("bad", ["xyz", "", "succes", "SUCCESS!", 3, None])
def test_parsing_rejects_anything_else_listing_the_valid_names(bad: object) -> None:
    with pytest.raises(InvalidStatus) as info:
        S.parse(bad)  # type: ignore[arg-type]
    assert str(info.value) == (
        "Status value must be in [UNKNOWN, NEW, SCHEDULING, SCHEDULED, QUEUED, PENDING, RESTORING, "
        f"RUNNING, SUCCESS, CANCELLING, CANCELLED, FAILED], but got {bad!r}"
    )
    assert isinstance(info.value, ValueError)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(str(tmp_path_factory.mktemp("status") / "t.db"), synchronous="OFF")
    yield s
    s.close()


def _task_in(store: Store, status: TaskStatus) -> int:
    def op(tx):
        tid = tx.insert({"graphspace": "DEFAULT", "graph": "g", "type": "t", "name": "n", "callable": "m.f"})
        store.Task.update(status=status.value).where(store.Task.id == tid).execute()
        return tid

    return store.write(op)


@pytest.mark.parametrize(("frm", "to"), PAIRS, ids=[f"{f.name}->{t.name}" for f, t in PAIRS])
def test_every_pair_moves_in_the_store_exactly_when_the_table_allows_it(store: Store, frm, to) -> None:
    assert can_move(frm, to) == ((frm, to) in ALLOWED)
    tid = _task_in(store, frm)
    before = len(store.history(tid))
    if (frm, to) in ALLOWED:
        assert store.write(lambda tx: tx.move(tid, frm, to)) is True
        assert store.get(tid).status is to
        assert store.history(tid)[-1][1:3] == (frm, to)
    else:
        with pytest.raises(InvalidTransition) as info:
            store.write(lambda tx: tx.move(tid, frm, to))
        assert str(info.value) == f"Task '{tid}' can't move from status {frm.name} to {to.name}"
        assert (info.value.task_id, info.value.current, info.value.requested) == (tid, frm, to)
        assert store.get(tid).status is frm
        assert len(store.history(tid)) == before


@pytest.mark.parametrize("frm", list(S))
def test_a_compare_and_set_from_a_stale_status_changes_nothing(store: Store, frm: TaskStatus) -> None:
    """The move names the status it expects; if the row is elsewhere, nothing is written."""
    tid = _task_in(store, frm)
    for stale in S:
        if stale is frm:
            continue
        for to in TRANSITIONS[stale]:
            assert store.write(lambda tx, stale=stale, to=to: tx.move(tid, stale, to)) is False
    assert store.get(tid).status is frm


def test_a_task_moved_then_deleted_in_one_batch_leaves_no_history(store: Store) -> None:
    """Moves are recorded at the end of a batch; a deletion later in the same batch must win."""
    tid = _task_in(store, S.QUEUED)
    other = _task_in(store, S.QUEUED)

    def moved_then_deleted(tx):
        assert tx.move(tid, S.QUEUED, S.RUNNING)
        assert tx.move(other, S.QUEUED, S.RUNNING)
        tx.delete(tid)

    store.write(moved_then_deleted)
    assert store.history(tid) == []
    assert [t.to_status for t in store.history(other)][-1] is S.RUNNING

    def deleted_then_recreated_moves(tx):  # a deletion refused by its savepoint leaves the history alone
        tx.move(other, S.RUNNING, S.SUCCESS)
        tx.delete(other)
        raise InvalidTransition(other, S.SUCCESS, S.QUEUED)

    with pytest.raises(InvalidTransition):
        store.write(deleted_then_recreated_moves)
    assert store.get(other).status is S.RUNNING
    assert [t.to_status for t in store.history(other)][-1] is S.RUNNING


def test_an_op_without_a_savepoint_that_refuses_after_writing_is_still_undone_alone(store: Store) -> None:
    """savepoint=False is a promise to refuse only before writing; one that breaks it has its
    batch run again with a savepoint: its write is undone, its neighbour's commits."""
    tid = _task_in(store, S.QUEUED)
    other = _task_in(store, S.QUEUED)
    before = len(store.history(tid))
    outcomes = []

    def broken_promise(tx):
        assert tx.move(tid, S.QUEUED, S.RUNNING)
        raise InvalidTransition(tid, S.RUNNING, S.NEW)

    store.write_async(lambda tx: tx.move(other, S.QUEUED, S.RUNNING), savepoint=False,
                      callback=lambda ok, value: outcomes.append((ok, value)))
    with pytest.raises(InvalidTransition):
        store.write(broken_promise, savepoint=False)  # leads: the queued move shares its batch
    assert outcomes == [(True, True)]
    assert store.get(tid).status is S.QUEUED and len(store.history(tid)) == before
    assert store.get(other).status is S.RUNNING


@pytest.mark.parametrize("text", [" success ", "success\n", "SUCCES", "UN\u212aNOWN", "ｓｕｃｃｅｓｓ", "", "running,"])
def test_a_status_is_parsed_by_its_exact_name_only(text) -> None:
    with pytest.raises(InvalidStatus, match="Status value must be in"):
        TaskStatus.parse(text)


@pytest.mark.parametrize("text", ["SUCCESS", "success", "Success", "sUcCeSs"])
def test_a_status_name_is_parsed_in_any_ascii_case(text) -> None:
    assert TaskStatus.parse(text) is TaskStatus.SUCCESS
