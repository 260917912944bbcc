"""The background checkpointer: copies SQLite's WAL into the database file, off the writers' path.

SQLite's own checkpoint runs inside the COMMIT that takes the WAL past
``wal_autocheckpoint`` pages, and first syncs the WAL: at
``synchronous=NORMAL`` a stream of short tasks spent a fifth of its time in
those commits. Here a thread of its own runs a PASSIVE checkpoint (it never
waits for, nor blocks, readers and writers) every ``CHECKPOINT_EVERY``
commits; the writers' connections still checkpoint by themselves past
``CHECKPOINT_BACKSTOP`` pages, which is what lets the WAL start over under a
steady stream, and bounds it should this thread fall behind. Used only for a
SQLite file the store opened at NORMAL or OFF with group commit: at FULL
every commit syncs the WAL anyway, and a concurrent checkpoint competes with
those syncs for the disk.

Invariants: at most one checkpoint runs at a time; wake-ups that come while
one runs fold into the next. Entered by the committing thread
(:meth:`Checkpointer.note_commit`, one at a time) and by its own thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from peewee import Database

from ._sql import wrap_db_errors

log = logging.getLogger(__name__)


class Checkpointer:
    """The thread that checkpoints the WAL every ``CHECKPOINT_EVERY`` commits (read from
    ``tuning``, the store, at each use)."""

    def __init__(self, db: Database, tuning: Any) -> None:
        self._db = db
        self._tuning = tuning
        self._commits = 0  # commits of the store's writers
        self._next_at = tuning.CHECKPOINT_EVERY  # the commit count that wakes the thread
        self._due = threading.Event()
        #: checkpoints run so far
        self.count = 0
        self.closed = False
        self._thread = threading.Thread(target=self._loop, name="taskmgr-checkpointer", daemon=True)
        self._thread.start()

    def note_commit(self) -> None:
        """A batch committed (called by the one thread committing at a time)."""
        self._commits += 1
        if self._commits >= self._next_at:
            self._next_at = self._commits + self._tuning.CHECKPOINT_EVERY
            self._due.set()

    def _loop(self) -> None:
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self.closed:
                    return
                try:
                    with wrap_db_errors:
                        self._db.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.count += 1
                except Exception as exc:  # noqa: BLE001 - the writers' backstop still bounds the WAL
                    log.warning("background WAL checkpoint failed (%s); the writers checkpoint past %d pages",
                                exc, self._tuning.CHECKPOINT_BACKSTOP)
        finally:
            if not self._db.is_closed():
                self._db.close()

    def threads(self) -> list[threading.Thread]:
        """Its thread, while alive."""
        return [self._thread] if self._thread.is_alive() else []

    def close(self) -> None:
        """Stop the thread (after the checkpoint under way, if any)."""
        self.closed = True
        self._due.set()
        self._thread.join()
