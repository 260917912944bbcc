"""The registry of nodes: who is alive, by a lease judged on the database's clock.

Owns the ``taskmgr_node`` table. A node's liveness is a lease: its heartbeat
is written by the DATABASE's clock (PostgreSQL's ``clock_timestamp()``,
SQLite's ``julianday('now')``: on SQLite every process shares the host's
clock), never the store's injectable clock, and must be renewed before its
own ``lease_ms`` runs out. Each node is judged by its own lease against that
same clock, so nodes with different timeouts or skewed clocks agree on who
is alive.

Invariants: a node is removed only by a DELETE that re-checks, in its WHERE,
that it is still dead (its lease still run out, or, for the pid shortcut,
its heartbeat still the one read): a node that renewed meanwhile stays. The
pid shortcut (its process is gone: dead at once) applies only to a row of
this host whose identity is this process's, non-empty: the same PID
namespace and boot. Entered by any thread; writes go through the commit
engine.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from ._sql import quote
from .errors import InvalidArgument


def process_identity() -> str:
    """This process's PID namespace and boot, ``"<boot_id>:<inode of /proc/self/ns/pid>"``, or
    ``""`` where they cannot be read. Two processes of equal non-empty identity see the same pids.

    Read at each call: a child forked into a new namespace has another.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except (OSError, ValueError):
        return ""
    return f"{boot}:{namespace}" if boot else ""


def lease_ms(lease: Any) -> int:
    """A lease in seconds as whole milliseconds (at least one).

    :raises InvalidArgument: when it is not a positive, finite number of seconds.
    """
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease < 10**9:
        raise InvalidArgument(f"a node's lease must be a positive, finite number of seconds, got {lease!r}")
    return max(1, int(lease * 1000))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NodeRegistry:
    """The node table of one store: registration, renewal, removal and the reaper."""

    def __init__(self, db: Any, node_model: Any, read: Callable[..., list[tuple[Any, ...]]],
                 write: Callable[..., Any], is_sqlite: bool) -> None:
        self._read = read
        self._write = write
        q, p = (lambda name: quote(db, name)), db.param
        table = q(node_model._meta.table_name)
        if is_sqlite:
            now = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"
        else:
            now = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        cols = ("node", "host", "pid", "started", "lease_ms", "identity")
        self._upsert = (
            f"INSERT INTO {table} ({', '.join(map(q, cols))}, {q('heartbeat')}) "
            f"VALUES ({', '.join([p] * len(cols))}, {now}) ON CONFLICT ({q('node')}) DO UPDATE SET "
            + ", ".join(f"{q(c)} = excluded.{q(c)}" for c in (*cols[1:], "heartbeat")))
        self._renew = f"UPDATE {table} SET {q('heartbeat')} = {now} WHERE {q('node')} = {p}"
        self._remove = f"DELETE FROM {table} WHERE {q('node')} = {p}"
        self._expire = f"UPDATE {table} SET {q('heartbeat')} = 0 WHERE {q('node')} = {p}"
        self._all = (f"SELECT {', '.join(map(q, ('node', 'host', 'pid', 'heartbeat', 'lease_ms', 'identity')))}, "
                     f"{now} FROM {table}")
        self._remove_expired = (f"{self._remove} AND {q('heartbeat')} + COALESCE(NULLIF({q('lease_ms')}, 0), {p}) "
                                f"< {now}")
        self._remove_unchanged = f"{self._remove} AND {q('heartbeat')} = {p}"

    def register(self, node: str, started: int, lease: float, identity: str | None) -> None:
        """Record ``node`` (this process) as alive for ``lease`` seconds, unless renewed."""
        ms = lease_ms(lease)
        ident = process_identity() if identity is None else identity
        values = (node, socket.gethostname(), os.getpid(), int(started), ms, ident)
        self._write(lambda tx: tx.execute(self._upsert, values))

    def heartbeat(self, node: str) -> bool:
        """Renew ``node``'s lease; False when it is not registered (any more)."""
        return bool(self._write(lambda tx: tx.execute(self._renew, (node,)).rowcount))

    def remove(self, node: str) -> None:
        """Forget ``node`` (it shut down)."""
        self._write(lambda tx: tx.execute(self._remove, (node,)))

    def expire(self, node: str) -> None:
        """End ``node``'s lease now (it abandoned its runs): the next reaper takes it for dead."""
        self._write(lambda tx: tx.execute(self._expire, (node,)))

    def reap(self, fallback_ms: int) -> tuple[set[str], list[str]]:
        """``(alive, dead)``, the dead removed (see the module docs); a row without a lease is
        judged by ``fallback_ms``."""
        rows = self._read(self._all, ())
        host, me = socket.gethostname(), process_identity()
        doomed: list[tuple[str, int | None]] = []  # (node, None): lease run out; (node, heartbeat): pid gone
        for name, node_host, pid, beat, lease, ident, now in rows:
            if beat + (lease or fallback_ms) < now:
                doomed.append((name, None))
            elif me and ident == me and node_host == host and not _pid_alive(pid):
                doomed.append((name, beat))
        alive = {row[0] for row in rows}
        if not doomed:
            return alive, []

        def op(tx: Any) -> list[str]:
            return [name for name, beat in doomed
                    if (tx.execute(self._remove_expired, (name, fallback_ms)) if beat is None
                        else tx.execute(self._remove_unchanged, (name, beat))).rowcount == 1]

        dead: list[str] = self._write(op)
        return alive - set(dead), dead
