"""Each task's recorded status changes: their format in the row, their reads and their pruning.

Owns the ``history`` column's format: one JSON array ``[from, to, at]`` and a
newline per change (JSON escapes every control character, so a newline ends
an entry and nothing else), appended by the very statement that makes the
change (see :mod:`taskmgr._tx`), so the two never disagree and a deleted
task takes its history along. (What versions before the history moved into
the row kept in a table of its own is merged into the rows by migration 2.)

Invariants: a prune rewrites rows in transactions that hold them (SQLite's
write lock, ``FOR UPDATE`` elsewhere), so a change committed meanwhile is
never lost. Entered by any thread that reads or prunes; the pruning writes go
through the store's commit engine.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

from ._models import TEXT, TEXT_OR_RAW
from .errors import InvalidTransition
from .status import TaskStatus, can_move
from .task import Transition

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=512)
def entry_head(frm: Any, to: TaskStatus) -> str:
    """A history entry up to its time. A damaged record's status that is not text (SQLite keeps
    what it is given) is recorded as text: bytes decoded, with their undecodable bytes escaped,
    anything else as ``str()``."""
    if isinstance(frm, bytes):
        frm = frm.decode("utf-8", "backslashreplace")
    elif frm is not None and not isinstance(frm, (str, TaskStatus)):
        frm = str(frm)
    return json.dumps([TEXT_OR_RAW.get(frm, frm), TEXT[to]], separators=(",", ":"))[:-1] + ","


@functools.lru_cache(maxsize=32)
def creation_steps(path: tuple[TaskStatus, ...]) -> tuple[tuple[TaskStatus | None, TaskStatus], ...]:
    """The history steps of a task created along ``path`` (checked against the table once per path).

    :raises InvalidTransition: when ``path`` does not start at NEW or takes a step the table does
        not allow.
    """
    if not path or path[0] is not TaskStatus.NEW:
        raise InvalidTransition(0, None, path[0] if path else TaskStatus.NEW)
    steps = tuple(itertools.pairwise(path))
    for frm, to in steps:
        if not can_move(frm, to):
            raise InvalidTransition(0, frm, to)
    return ((None, TaskStatus.NEW), *steps)


def entry_at(line: str) -> int:
    """The time of one entry (0 for an entry altered by hand past reading: as old as can be)."""
    try:
        return int(line[line.rindex(",") + 1 : -1])
    except ValueError:
        return 0


def parse(task_id: int, text: str) -> list[Transition]:
    """The transitions of one row's history text; an unreadable entry is skipped, with a warning."""
    out = []
    for line in text.split("\n")[:-1]:
        try:
            frm, to, at = json.loads(line)
        except (ValueError, TypeError):
            log.warning("task %d: a history entry that is not a JSON array [from, to, at] is skipped: %r",
                        task_id, line)
            continue
        out.append(Transition(task_id, status_or_raw(frm), status_or_raw(to) or "", at))
    return out


def status_or_raw(value: str | None) -> TaskStatus | str | None:
    """The status a stored text names, or the text itself when it names none."""
    if value is None:
        return None
    try:
        return TaskStatus(value)
    except ValueError:
        return value


def _readable(task_id: int, text: Any) -> bool:
    """Whether a row's history is text to parse; one that is not (a damaged file) reads as none."""
    if isinstance(text, str):
        return bool(text)
    if text is not None:
        log.warning("task %d: its history is not text (%s) and is skipped", task_id, type(text).__name__)
    return False


class History:
    """The history reads and the pruning of one store."""

    #: task rows rewritten per transaction by :meth:`prune`
    PRUNE_BATCH = 500

    def __init__(self, sql: Any, read: Callable[..., list[tuple[Any, ...]]], write: Callable[..., Any],
                 tuning: Any) -> None:
        self._sql = sql
        self._read = read
        self._write = write
        self._tuning = tuning  # where PRUNE_BATCH is read (the store: set on its class or instance)

    def read(self, task_id: int | None = None) -> list[Transition]:
        """Recorded status changes of one task, in the order they were made; or of every task, task
        by task in id order."""
        s = self._sql
        col, key = s.col("history"), s.col("id")
        if task_id is None:
            rows = self._read(f"SELECT {key}, {col} FROM {s.table} WHERE {col} IS NOT NULL ORDER BY {key}", ())
        else:
            rows = self._read(f"SELECT {key}, {col} FROM {s.table} WHERE {key} = {s.db.param}", (task_id,))
        return [t for tid, text in rows if _readable(tid, text) for t in parse(tid, text)]

    def prune(self, before_ms: int) -> int:
        """Delete history entries older than ``before_ms``; returns how many. Every entry older
        than the cut goes, wherever it is in the row: nodes' clocks may differ."""
        removed = 0
        after: int | None = 0
        while after is not None:
            n, after = self._write(self._prune_rows, before_ms, after)
            removed += n
        return int(removed)

    def _prune_rows(self, tx: Any, before_ms: int, after: int) -> tuple[int, int | None]:
        s, batch = self._sql, self._tuning.PRUNE_BATCH
        col, key, p = s.col("history"), s.col("id"), s.db.param
        lock = "" if s.is_sqlite else " FOR UPDATE"
        rows = tx.read(f"SELECT {key}, {col} FROM {s.table} WHERE {key} > {p} AND {col} IS NOT NULL "
                       f"ORDER BY {key} LIMIT {batch}{lock}", (after,))
        removed = 0
        for tid, text in rows:
            if not isinstance(text, str):
                continue  # unreadable (a damaged file): left as it is
            lines = text.split("\n")[:-1]
            kept = [line for line in lines if entry_at(line) >= before_ms]
            if len(kept) != len(lines):
                removed += len(lines) - len(kept)
                tx.execute(f"UPDATE {s.table} SET {col} = {p} WHERE {key} = {p}",
                           ("".join(line + "\n" for line in kept) or None, tid))
        return removed, (rows[-1][0] if len(rows) == batch else None)
