"""The HTTP server of ``taskmgr serve``: waitress, with the limits a server needs against clients it
cannot trust.

:func:`make_server` returns a waitress server for a WSGI application (the
REST API of :mod:`taskmgr.rest`) whose connections are guarded:

* **Bodies are refused before they are read.** As soon as a request's
  headers are in, a ``Content-Length`` over the body limit (the task input
  limit plus a margin for JSON) is answered 413, a body sent without
  credentials (when the server has some) 401, a body from another site's
  page or to a Host the server does not answer to 403, and a POST body that
  is not sent as JSON 415, without reading a byte of it; a chunked body is
  cut off at the limit. waitress alone buffers a body up to 1 GiB, to a
  temporary file, before the application sees it.
* **Slow clients cannot starve the others.** A new connection must start
  its request within ``header_timeout`` seconds, the request's headers must
  arrive within ``header_timeout`` seconds of its first byte, and its body
  at 64 KiB/s on average after that (else 408); a connection idle for
  ``idle_timeout`` is closed, and so is one whose client stops reading
  its answer for as long (its request thread is freed). Up to
  ``connection_limit`` connections are open at once (poll, not select, so
  the limit is not select's 1,024 descriptors).
* **Every answer is the contract's JSON.** What waitress refuses itself (a
  malformed request line or header, a bad ``Content-Length``, headers over
  the limit, a transfer coding it does not know) is answered with the error
  object ``{"exception", "message", "cause"}``, never plain text, and never
  a 5xx.
* **A refused client hears why.** After an error answer the connection is
  shut for writing and what the client still sends is read and dropped for
  up to 2 seconds (a "lingering close"), so that its kernel does not discard
  the answer when a close with unread data sends a reset.
* Every refusal is logged on one line, like a request (control characters
  escaped, at most 300 characters of the target).

What a client can still cost: ``connection_limit`` connections each holding
up to 64 KiB of headers, or a body being received (at most the body limit,
beyond 512 KiB in a temporary file), and up to about 1 MiB of unsent answer
(a request thread waits for its client to read beyond that). A server
reachable by clients you do not trust belongs behind a reverse proxy that
limits connections and rates per client (nginx, HAProxy).
"""

from __future__ import annotations

import collections
import logging
import resource
import socket
import threading
import time
import types
from collections.abc import Collection
from typing import Any

from waitress import create_server
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask
from waitress.utilities import Error

from ._text import printable
from .rest import (
    _PUBLIC,
    _SAFE_METHODS,
    ApiError,
    _json_type,
    _shown,
    credentials_match,
    cross_site,
    error_body,
    host_refused,
    unauthorized,
)

__all__ = ["make_server", "listening_urls", "AccessLog"]

log = logging.getLogger(__name__)

#: seconds an error answer's connection keeps reading (and dropping) what its client still sends
LINGER = 2.0
#: the slowest average rate, in bytes per second, at which a body may arrive (after header_timeout)
MIN_BODY_RATE = 64 * 1024
#: largest request line and headers
MAX_HEADER = 64 * 1024
#: unsent answer bytes past which a request thread waits for its client to read
OUTBUF_HIGH = 1024 * 1024


class _JsonError(Error):
    """An error waitress answers before the application, in the contract's JSON."""

    def __init__(self, code: int, reason: str, kind: str, message: str,
                 headers: Collection[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.code, self.reason, self.kind, self.message = code, reason, kind, message
        self.headers = list(headers)

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        return (f"{self.code} {self.reason}", [("Content-Type", "application/json"), *self.headers],
                error_body(self.kind, self.message))


def _from_api(exc: ApiError) -> _JsonError:
    code, _, reason = str(exc.status).partition(" ")
    headers: Any = exc.headers or {}
    pairs = [(str(k), str(v)) for k, v in (headers.items() if isinstance(headers, dict) else headers)]
    return _JsonError(int(code), reason, exc.kind, exc.message, pairs)


def _from_waitress(e: Error) -> _JsonError:
    """waitress's own refusals, as the contract's error objects (never a 5xx for a client's fault)."""
    name = type(e).__name__
    if name == "RequestHeaderFieldsTooLarge":
        return _JsonError(431, "Request Header Fields Too Large", "RequestHeaderFieldsTooLarge",
                          f"the request line and headers are over this server's limit of {MAX_HEADER} bytes")
    if name == "RequestEntityTooLarge":
        return _JsonError(413, "Request Entity Too Large", "LimitExceeded",
                          f"the request body is over this server's limit ({e.body})")
    if name == "ServerNotImplemented":
        return _JsonError(400, "Bad Request", "BadRequest",
                          f"{e.body} Send the body with Content-Length, or Transfer-Encoding: chunked")
    if e.code >= 500:
        return _JsonError(500, "Internal Server Error", "InternalError", "internal error: see the server log")
    return _JsonError(e.code, e.reason, name, f"the request is malformed: {e.body}")


class _Guard:
    """What is checked as soon as a request's headers are in, before its body is read."""

    def __init__(self, body_limit: int, input_limit: int, auth: tuple[str, str] | None,
                 allowed_hosts: Collection[str] | None) -> None:
        self.body_limit = body_limit
        self.input_limit = input_limit
        self.expected = None if auth is None else f"{auth[0]}:{auth[1]}".encode()
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)

    def check(self, p: HTTPRequestParser) -> _JsonError | None:
        if not (p.chunked or p.content_length > 0):
            return None  # no body: the application answers, and logs, whatever it is
        if p.content_length > self.body_limit:
            return _JsonError(413, "Request Entity Too Large", "LimitExceeded",
                              f"Request body size {p.content_length} exceeded limit {self.body_limit} bytes "
                              f"(the task input limit, {self.input_limit} bytes, and a margin for JSON)")
        h = p.headers
        if self.expected is not None and p.path not in _PUBLIC \
                and not credentials_match(h.get("AUTHORIZATION"), self.expected):
            return _from_api(unauthorized())
        refused = host_refused(h.get("HOST"), self.allowed_hosts)
        if refused is None and p.command not in _SAFE_METHODS:
            refused = cross_site({"HTTP_SEC_FETCH_SITE": h.get("SEC_FETCH_SITE"), "HTTP_ORIGIN": h.get("ORIGIN"),
                                  "HTTP_HOST": h.get("HOST", "")})
        if refused is not None:
            return _from_api(refused)
        if p.command == "POST":
            ctype = h.get("CONTENT_TYPE")
            if not _json_type(ctype):
                return _JsonError(415, "Unsupported Media Type", "UnsupportedMediaType",
                                  "the request body must be JSON sent with Content-Type: application/json, got "
                                  + ("no Content-Type" if not ctype else _shown(ctype)))
        return None


class _Parser(HTTPRequestParser):
    guard: _Guard  # set on the subclass made for each server
    refused = False

    def parse_header(self, header_plus: bytes) -> None:
        try:
            super().parse_header(header_plus)
        except ValueError:  # int() of a Content-Length of thousands of digits
            self._refuse(_JsonError(413, "Request Entity Too Large", "LimitExceeded",
                                    f"Request body size exceeded limit {self.guard.body_limit} bytes "
                                    "(its Content-Length has more digits than any body this server takes)"))
            return
        error = self.guard.check(self)
        if error is not None:
            self._refuse(error)

    def _refuse(self, error: _JsonError) -> None:
        """Answer ``error`` without reading the body (and without a 100 Continue for it)."""
        self.error = error
        self.refused = True
        self.completed = True
        self.expect_continue = False
        self.body_rcv = None
        self.content_length = 0
        self.chunked = False


class _ErrorTask(ErrorTask):
    def execute(self) -> None:
        e = self.request.error
        if not isinstance(e, _JsonError):
            e = _from_waitress(e)
        status, headers, body = e.to_response()
        self.status = status
        self.response_headers.extend(headers)
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        self.channel.linger_needed = True
        r = self.request
        path = getattr(r, "path", None)
        target = "-" if path is None else printable(path + (f"?{r.query}" if getattr(r, "query", "") else ""), 300)
        log.info("%s %s %s %s (refused by the server)", self.channel.addr[0] if self.channel.addr else "-",
                 printable(getattr(r, "command", None) or "-", 20), target, status)


class _Channel(HTTPChannel):
    error_task_class = _ErrorTask
    request_started: float | None = None  # monotonic time of the first byte of the request under way
    spoke = False  # whether the client has sent anything yet
    linger_needed = False
    lingering = False
    linger_until = 0.0

    def received(self, data: bytes) -> bool:
        self.spoke = True
        before = self.request
        result = super().received(data)
        if self.request is None:
            self.request_started = None
        elif self.request is not before:  # type: ignore[unreachable]  # waitress's attribute, typed None
            self.request_started = time.monotonic()
        return result

    def _drain(self) -> None:
        try:
            self.recv(65536)  # dropped; on the client's end of stream, recv closes the channel
        except OSError:
            HTTPChannel.handle_close(self)

    def handle_close(self) -> None:
        if self.linger_needed and not self.lingering and self.connected and self.socket is not None:
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                # from now on the channel only reads, and drops what it reads (set on the instance:
                # the class's readable and writable, asked of every channel at every turn of the
                # loop, stay waitress's own)
                self.lingering = True
                self.linger_until = time.monotonic() + LINGER
                self.will_close = self.close_when_flushed = False
                self.readable = lambda: True
                self.writable = lambda: False
                self.handle_read = self._drain
                return
        super().handle_close()

    def time_out(self, message: str) -> None:
        """Answer 408 to a request that arrives too slowly, and close."""
        body = error_body("RequestTimeout", message)
        head = (f"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        with self.outbuf_lock:
            self.outbufs[-1].append(head + body)
            self.total_outbufs_len += len(head) + len(body)
        with self.requests_lock:
            self.request = None
            self.request_started = None
            self.close_when_flushed = True
            self.linger_needed = True
        log.info("%s - - 408 Request Timeout (%s)", self.addr[0] if self.addr else "-", message)


def _retire(server: BaseWSGIServer, channel: HTTPChannel) -> None:
    """Close ``channel`` from outside its own events, in two steps.

    Maintenance runs while waitress builds the set of descriptors to poll: a socket closed then
    frees its descriptor while the poll may still report on it, and a connection accepted in the
    same pass, given that descriptor, would be closed by the stale report. So the channel leaves
    the map now (its request thread, waiting on it, is let go), and its socket is closed at the
    next maintenance, when no poll holds its descriptor.
    """
    with channel.outbuf_lock:
        for outbuf in channel.outbufs:
            try:
                outbuf.close()
            except Exception:
                log.exception("could not close an output buffer")
        channel.total_outbufs_len = 0
        channel.connected = False
        channel.outbuf_lock.notify()
    channel.accepting = channel.connecting = False
    channel.del_channel()
    if channel.socket is not None:
        server.taskmgr_retired.append(channel.socket)


def _maintenance(self: BaseWSGIServer, now: float) -> None:
    """Run every second by waitress's loop: close idle connections (waitress's own rule), time out
    requests that arrive too slowly, drop clients that stopped reading, end lingering closes."""
    retired, self.taskmgr_retired = self.taskmgr_retired, []
    for sock in retired:
        try:
            sock.close()
        except OSError:
            pass
    mono = time.monotonic()
    idle_cutoff = now - self.adj.channel_timeout
    header_timeout = self.taskmgr_header_timeout
    for channel in list(self.active_channels.values()):
        if getattr(channel, "lingering", False):
            if mono >= channel.linger_until:
                _retire(self, channel)
            continue
        if channel.requests:
            # an answer under way: a client that has read none of it for idle_timeout is gone, and
            # its request thread (waiting for room in the buffer) must be let go
            if channel.total_outbufs_len and channel.last_activity < idle_cutoff:
                log.info("%s - - closed: the client read nothing of its answer for %.0f s",
                         channel.addr[0] if channel.addr else "-", self.adj.channel_timeout)
                _retire(self, channel)
            continue
        started = getattr(channel, "request_started", None)
        request = channel.request
        if started is not None and request is not None and not channel.close_when_flushed:
            if not request.headers_finished:
                if mono - started > header_timeout:
                    channel.time_out(f"the request's headers did not arrive within {header_timeout:g} s")
                continue
            expected = max(request.content_length, request.body_bytes_received)
            if mono - started > header_timeout + expected / MIN_BODY_RATE:
                channel.time_out(f"the request's body arrived slower than {MIN_BODY_RATE // 1024} KiB/s")
            continue
        if channel.last_activity < idle_cutoff or (not channel.spoke and now - channel.creation_time > header_timeout):
            channel.will_close = True  # idle, or connected and silent past the header timeout


class AccessLog:
    """The request log of ``taskmgr serve``, written in batches by a thread of its own.

    A request hands its line over (a deque append); the writer thread stamps and writes what has
    gathered every :attr:`INTERVAL` seconds, in one write. A log record per request, formatted
    and flushed by the request's thread, cost a ``GET`` of one task a tenth of its time. Lines
    are the format of the other log lines (``time INFO taskmgr.rest: ...``), at most INTERVAL
    late; a process killed outright loses the last INTERVAL of them.
    """

    INTERVAL = 0.2

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._lines: collections.deque[tuple[float, str]] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskmgr-access-log", daemon=True)
        self._thread.start()

    def __call__(self, line: str) -> None:
        self._lines.append((time.time(), line))

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self.flush()
        self.flush()

    def flush(self) -> None:
        out, stamp, second = [], "", -1
        lines = self._lines
        while lines:
            at, line = lines.popleft()
            if int(at) != second:
                second = int(at)
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
            out.append(f"{stamp},{int(at * 1000) % 1000:03d} INFO taskmgr.rest: {line}\n")
        if out:
            try:
                self.stream.write("".join(out))
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Write what is left, and stop the writer."""
        self._stop.set()
        self._thread.join(5)


def _listeners(server: Any) -> list[BaseWSGIServer]:
    socket_map = getattr(server, "map", None)
    if socket_map is None:
        socket_map = server._map
    return [d for d in socket_map.values() if isinstance(d, BaseWSGIServer)]


def listening_urls(server: Any) -> list[str]:
    """``http://host:port/`` for every address ``server`` listens on (IPv6 hosts in brackets)."""
    urls = []
    for s in _listeners(server):
        host = s.effective_host
        urls.append(f"http://{'[' + host + ']' if ':' in host else host}:{s.effective_port}/")
    return urls


def is_loopback(server: Any) -> bool:
    """Whether every address ``server`` listens on is a loopback address."""
    import ipaddress

    try:
        return all(ipaddress.ip_address(s.effective_host.split("%")[0]).is_loopback for s in _listeners(server))
    except ValueError:
        return False


def make_server(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    threads: int = 8,
    body_limit: int,
    input_limit: int,
    auth: tuple[str, str] | None = None,
    allowed_hosts: Collection[str] | None = None,
    connection_limit: int = 512,
    header_timeout: float = 10.0,
    idle_timeout: float = 30.0,
) -> Any:
    """A waitress server for ``app`` with the guards of this module; ``run()`` serves, ``close()``
    stops. ``allowed_hosts`` and ``auth`` are the application's own (checked here again for
    requests with a body, before it is read).

    :raises OSError: when the address cannot be resolved or listened on.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        connection_limit = max(1, min(connection_limit, soft - 64))
    guard = _Guard(body_limit, input_limit, auth, allowed_hosts)
    parser = type("_GuardedParser", (_Parser,), {"guard": guard})
    channel = type("_GuardedChannel", (_Channel,), {"parser_class": parser})
    server = create_server(
        app, host=host, port=port, threads=threads,
        connection_limit=connection_limit, channel_timeout=idle_timeout, cleanup_interval=1,
        max_request_body_size=body_limit + 1, max_request_header_size=MAX_HEADER,
        outbuf_high_watermark=OUTBUF_HIGH, outbuf_overflow=2 * OUTBUF_HIGH,
        asyncore_use_poll=True, clear_untrusted_proxy_headers=False, ident="taskmgr",
    )
    for listener in _listeners(server):
        listener.channel_class = channel
        listener.taskmgr_header_timeout = header_timeout
        listener.taskmgr_retired = []
        listener.maintenance = types.MethodType(_maintenance, listener)
    return server
