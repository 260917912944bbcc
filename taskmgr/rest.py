"""The REST API of the contract (section 4) as a WSGI application over a TaskManager.

:func:`create_app` returns a Falcon application that a host can mount in its
own WSGI server; ``taskmgr serve`` runs it on waitress, behind the guards of
:mod:`taskmgr.server`. Both come with the ``server`` extra (``pip install
'taskmgr[server]'``); the core does not need them.

Routes (each also under the legacy prefix ``/graphs/{graph}``, which means
graphspace ``DEFAULT``; every GET route answers HEAD too):

=======  ====================================================  ==========================================
GET      ``/graphspaces/{gs}/graphs/{g}/tasks``                list: ``status``, ``limit``, ``page``,
                                                               repeatable ``ids``
GET      ``/graphspaces/{gs}/graphs/{g}/tasks/{id}``           one task
DELETE   ``/graphspaces/{gs}/graphs/{g}/tasks/{id}?force=``    delete the record: 204
PUT      ``/graphspaces/{gs}/graphs/{g}/tasks/{id}?action=``   ``cancel`` (202 ``{"cancelled": true}``);
                                                               extensions ``suspend``, ``resume``
POST     ``/graphspaces/{gs}/graphs/{g}/jobs/{type}``          submit a task of a type registered with
                                                               ``http=True``: 201 ``{"task_id": N}``
GET      ``/versions``                                         what HugeGraph clients read first
GET      ``/openapi.json``                                     the OpenAPI 3 document of all this
=======  ====================================================  ==========================================

Every error is the contract's JSON object ``{"exception": kind, "message":
text, "cause": ""}`` with a 4xx status: 400 for a bad request, 401 without
valid credentials, 403 for a cross-site request or a Host this server does not
answer to, 404 for what does not exist, 405 for a method a path does not have,
413 for a body over the limit, 415 for a body that is not sent as JSON. 503
means the store could not be written (locked too long, disk full, or too many
requests already waiting to write) and the request changed nothing; any other
5xx is a bug, logged with its traceback.

Parameters are parsed strictly: numbers are ASCII digits (at most 19), a
status is one of the twelve names in any ASCII case, a page token is exactly
one this server made. Names, graphs and graphspaces holding a control
character (C0, DEL, C1) are refused, and nothing a request sends is logged
raw or unbounded.

Lists are written out as they are read, a few tasks at a time
(:attr:`TasksResource.CHUNK`), so that an answer holds at most that many
records in memory whatever its length; a list that fails once its answer has
begun ends without its closing bytes (and, on waitress, without the last
chunk of its chunked encoding), never as a complete-looking answer.

With ``auth=(user, password)`` every route but ``/versions`` and
``/openapi.json`` needs HTTP Basic credentials (the graph database's clients
send them; ``/versions`` is read before they authenticate). Credentials are
compared in constant time and never logged.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from importlib import resources
from json.encoder import encode_basestring as _esc
from typing import Any
from urllib.parse import unquote_to_bytes

import falcon

from . import __version__
from ._text import CONTROL, printable
from .errors import (
    InvalidArgument,
    InvalidStatus,
    LimitExceeded,
    ManagerStateError,
    StoreError,
    TaskManagerError,
    TaskNotFound,
)
from .manager import DEFAULT_GRAPHSPACE, MAX_ID, TaskManager, encode_page
from .status import TaskStatus
from .task import Task

__all__ = ["create_app", "body_limit", "API_CORE_VERSION", "WriteLanes"]

log = logging.getLogger(__name__)

#: the HugeGraph release whose task API this server speaks (clients pick graphspace URLs from 1.7 on)
API_CORE_VERSION = "1.7.0"
_PUBLIC = frozenset({"/versions", "/openapi.json"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOG_TARGET = 300  # characters of a request's path and query that a log line shows

_STATUS_OF: list[tuple[type[TaskManagerError], str]] = [
    (TaskNotFound, falcon.HTTP_404),
    (LimitExceeded, falcon.HTTP_413),
    (StoreError, falcon.HTTP_503),
    (ManagerStateError, falcon.HTTP_503),
    (TaskManagerError, falcon.HTTP_400),
]


def body_limit(max_input_size: int) -> int:
    """The largest request body accepted for a task input of at most ``max_input_size`` bytes: the
    limit plus a margin for JSON's own spelling (white space, escapes), 1/16 of it and 64 KiB."""
    return max_input_size + max_input_size // 16 + 64 * 1024


class ApiError(falcon.HTTPError):
    """An error answered as the contract's JSON object."""

    def __init__(self, status: str, kind: str, message: str, cause: str = "", **kwargs: Any) -> None:
        super().__init__(status, title=kind, description=message, **kwargs)
        self.kind = kind
        self.message = message
        self.cause = cause


def error_body(kind: str, message: str, cause: str = "") -> bytes:
    """The contract's error object, as the bytes of its JSON."""
    return json.dumps({"exception": kind, "message": message, "cause": cause}, ensure_ascii=False).encode()


def _serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    path = printable(req.path, _LOG_TARGET)
    if isinstance(exc, ApiError):
        kind, message, cause = exc.kind, exc.message, exc.cause
    elif isinstance(exc, falcon.HTTPRouteNotFound):
        kind, message, cause = "NotFound", f"no such path: {path}", ""
    elif isinstance(exc, falcon.HTTPMethodNotAllowed):
        allowed = dict(exc.headers or {}).get("Allow", "")
        kind, cause = "MethodNotAllowed", ""
        message = f"{path} does not accept {printable(req.method, 20)}; it accepts {allowed or 'nothing'}"
    else:  # any other error Falcon raises itself
        kind = type(exc).__name__.removeprefix("HTTP")
        message, cause = exc.description or exc.title or kind, ""
    resp.content_type = falcon.MEDIA_JSON
    resp.data = error_body(kind, message, cause)


def _from_library(exc: TaskManagerError) -> ApiError:
    for cls, status in _STATUS_OF:
        if isinstance(exc, cls):
            cause = "" if exc.__cause__ is None else str(exc.__cause__)
            return ApiError(status, type(exc).__name__, str(exc), cause)
    raise AssertionError("unreachable")  # pragma: no cover


def _bad_request(message: str) -> ApiError:
    return ApiError(falcon.HTTP_400, "InvalidArgument", message)


def _shown(text: str) -> str:
    """``text`` quoted for an error message: its repr (control characters escaped), at most 100
    characters of it."""
    return repr(text) if len(text) <= 100 else f"{text[:100]!r}... ({len(text)} characters)"


# ------------------------------------------------------------------ parameters
def _one(req: falcon.Request, name: str) -> str | None:
    values = req.params.get(name)
    if isinstance(values, list):
        raise _bad_request(f"parameter {name!r} was given {len(values)} times; give it once")
    return values


def _digits(text: str) -> int | None:
    """The value of 1 to 19 ASCII digits, else None (no sign, space, underscore or other script's
    digits, and never Python's digit limit)."""
    if 0 < len(text) <= 19 and text.isascii() and text.isdigit():
        return int(text)
    return None


def _task_id(text: str) -> int:
    value = _digits(text)
    if value is None or not 0 < value <= MAX_ID:
        raise _bad_request(f"task id must be a positive integer, got {_shown(text)}")
    return value


def _limit(req: falcon.Request) -> int:
    text = _one(req, "limit")
    if text is None:
        return 100
    value = -1 if text == "-1" else _digits(text)
    if value is None or value > MAX_ID:
        raise _bad_request(f"limit must be -1 (no limit) or a non-negative integer, got {_shown(text)}")
    return value


_STATUSES = {s.value: s for s in TaskStatus}
_STATUS_NAMES = ", ".join(s.name for s in TaskStatus)


def _status(req: falcon.Request) -> TaskStatus | None:
    text = _one(req, "status")
    if text is None:
        return None
    status = _STATUSES.get(text.lower()) if text.isascii() else None
    if status is None:
        raise InvalidStatus(f"Status value must be in [{_STATUS_NAMES}], but got {_shown(text)}")
    return status


_PAGE_PREFIX = b"taskmgr:"


def _page_token(text: str) -> str:
    """``text`` when it is a page token exactly as this server writes them (or ``""``)."""
    if text == "":
        return text
    if len(text) <= 40 and text.isascii():
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        digits = raw[len(_PAGE_PREFIX):] if raw.startswith(_PAGE_PREFIX) else b""
        if 0 < len(digits) <= 19 and digits.isdigit() and int(digits) <= MAX_ID \
                and encode_page(int(digits)) == text:
            return text
    raise InvalidArgument(
        f"invalid page token {_shown(text)}: pass the 'page' value of the previous answer, or '' for the first page"
    )


def _bool(req: falcon.Request, name: str) -> bool:
    text = _one(req, name)
    if text is None:
        return False
    if text.isascii() and text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise _bad_request(f"parameter {name!r} must be true or false, got {_shown(text)}")


def _check_scope(graph: str, graphspace: str) -> None:
    if CONTROL.search(graph) or CONTROL.search(graphspace):
        what, value = ("graph", graph) if CONTROL.search(graph) else ("graphspace", graphspace)
        raise _bad_request(f"{what} must not hold control characters, got {_shown(value)}")


# ---------------------------------------------------------------- task JSON
_BIG = 256 * 1024  # a record with more characters of input and result than this is written in slices
_SLICE = 64 * 1024


def _task_bytes(t: Task) -> bytes:
    """The JSON of ``t.to_dict()`` (same keys, same order), built without the dict."""
    try:
        if not (type(t.progress) is type(t.created) is type(t.updated) is type(t.retries) is type(t.id) is int):
            raise TypeError  # a damaged row: let json say it
        text = (f'{{"task_name": {_esc(t.name)}, "task_progress": {t.progress}, "task_create": {t.created}, '
                f'"task_status": "{t.status.value}", "task_update": {t.updated}'
                + ("" if t.result is None else f', "task_result": {_esc(t.result)}')
                + f', "task_retries": {t.retries}, "id": {t.id}, "task_type": {_esc(t.type)}, '
                f'"task_callable": {_esc(t.callable)}'
                + ("" if t.input is None else f', "task_input": {_esc(t.input)}') + "}")
        return text.encode()
    except (TypeError, UnicodeEncodeError):  # a lone surrogate in a damaged row: escaped, not a 500
        return json.dumps(t.to_dict()).encode()


def _size(t: Task) -> int:
    return (0 if t.input is None else len(t.input)) + (0 if t.result is None else len(t.result))


def _escaped(text: str) -> Iterator[bytes]:
    for i in range(0, len(text), _SLICE):
        piece = text[i:i + _SLICE]
        try:
            yield _esc(piece)[1:-1].encode()
        except UnicodeEncodeError:
            yield json.dumps(piece)[1:-1].encode()


def _task_pieces(t: Task) -> Iterator[bytes]:
    """The JSON of a task in pieces of at most about 64 KiB: a big input or result is never copied
    whole into its JSON."""
    if _size(t) <= _BIG:
        yield _task_bytes(t)
        return
    head = _task_bytes(dataclasses.replace(t, result=None, input=None))[:-1]
    cut = head.index(b', "task_retries": ')
    yield head[:cut]
    if t.result is not None:
        yield b', "task_result": "'
        yield from _escaped(t.result)
        yield b'"'
    yield head[cut:]
    if t.input is not None:
        yield b', "task_input": "'
        yield from _escaped(t.input)
        yield b'"'
    yield b"}"


# ------------------------------------------------------------------ resources
class _Resource:
    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager


class _ListBroken(Exception):
    """Raised out of a list answer's body when a read fails after the answer has begun."""


class TasksResource(_Resource):
    #: tasks read from the store at a time: an answer holds at most this many records (one more
    #: while the store looks for the next page), whatever its limit
    CHUNK = 8
    #: tasks of the first read; the reads after it take CHUNK tasks while the records are small
    FIRST = 1
    #: a record larger than this (characters of input and result) makes the next read one task
    LARGE = 256 * 1024
    #: bytes of small records gathered before they are handed to the server
    BUFFER = 64 * 1024

    def on_get(self, req: falcon.Request, resp: falcon.Response, graph: str,
               graphspace: str = DEFAULT_GRAPHSPACE) -> None:
        _check_scope(graph, graphspace)
        status = _status(req)
        limit = _limit(req)
        page = _one(req, "page")
        raw_ids = req.params.get("ids")
        scope: dict[str, Any] = {"graph": graph, "graphspace": graphspace}
        state: dict[str, Any] = {"token": None}
        if raw_ids is not None:
            if page is not None or status is not None:
                raise _bad_request("ids cannot be combined with status or page: ask for the ids alone")
            ids = sorted({_task_id(i) for i in (raw_ids if isinstance(raw_ids, list) else [raw_ids])})
            state["at"] = 0

            def read(want: int) -> tuple[list[Task], bool]:
                at = state["at"]
                chunk = ids[at:at + max(want, 1)]
                state["at"] = at + len(chunk)
                return self.manager.list(ids=chunk, limit=-1, **scope), state["at"] >= len(ids)
        else:
            if page is not None:
                state["token"] = _page_token(page)
                if limit == 0:
                    raise _bad_request("limit=0 with page would answer no tasks and the same page for ever: "
                                       "ask for at least 1 task a page, or leave out page")
            else:
                state["token"] = ""

            def read(want: int) -> tuple[list[Task], bool]:
                found = self.manager.list(status=status, limit=want, page=state["token"], graph=graph,
                                          graphspace=graphspace)
                state["token"] = found.next_page
                return found.tasks, found.next_page is None

        resp.content_type = falcon.MEDIA_JSON
        if limit == 0:
            resp.data = b'{"tasks": []}'
            return
        # the first chunk is read now, so that a bad parameter or a failing store is still a proper error
        tasks, done = read(self.FIRST if limit == -1 else min(self.FIRST, limit))
        if limit != -1 and len(tasks) > limit:
            tasks, done = tasks[:limit], True
        body = self._body(tasks, done, read, limit, page is not None, state)
        first = next(body)  # what the first BUFFER bytes take: a read failing by then is a proper error too
        if state.get("finished"):
            resp.data = first  # the whole answer: one write, with a Content-Length
        else:
            resp.stream = itertools.chain((first,), body)

    on_head = on_get

    def _body(self, tasks: list[Task], done: bool, read: Callable[[int], tuple[list[Task], bool]],
              limit: int, paged: bool, state: dict[str, Any]) -> Iterator[bytes]:
        """The answer's bytes, reading on as it goes. Until its first piece is out, a failing read
        raises as it is (the answer has not begun); after, it ends the answer cut off."""
        buf: list[bytes] = [b'{"tasks": [']
        size, sent, begun = 0, 0, False
        while True:
            large = any(_size(t) > self.LARGE for t in tasks)
            for t in tasks:
                if sent:
                    buf.append(b", ")
                sent += 1
                if _size(t) <= _BIG:
                    piece = _task_bytes(t)
                    buf.append(piece)
                    size += len(piece)
                    if size >= self.BUFFER:
                        begun = True
                        yield b"".join(buf)
                        buf, size = [], 0
                else:
                    begun = True
                    yield b"".join(buf)
                    buf, size = [], 0
                    yield from _task_pieces(t)
            tasks = []
            if done or (limit != -1 and sent >= limit):
                break
            want = 1 if large else self.CHUNK if limit == -1 else min(self.CHUNK, limit - sent)
            try:
                tasks, done = read(want)
            except Exception as exc:
                if not begun:
                    raise
                log.error("a list failed after its answer had begun (%s: %s); the answer ends cut off",
                          type(exc).__name__, printable(str(exc), _LOG_TARGET))
                raise _ListBroken("the list could not be read to its end") from exc
            if limit != -1 and len(tasks) > limit - sent:
                tasks, done = tasks[:limit - sent], True
        buf.append(b'], "page": ' + json.dumps(state["token"]).encode() + b"}" if paged else b"]}")
        state["finished"] = not begun
        yield b"".join(buf)


class TaskResource(_Resource):
    def __init__(self, manager: TaskManager, lanes: WriteLanes | None) -> None:
        super().__init__(manager)
        self.lanes = lanes

    def on_get(self, req: falcon.Request, resp: falcon.Response, graph: str, task_id: str,
               graphspace: str = DEFAULT_GRAPHSPACE) -> None:
        _check_scope(graph, graphspace)
        task = self.manager.get(_task_id(task_id), graph=graph, graphspace=graphspace)
        resp.content_type = falcon.MEDIA_JSON
        if _size(task) <= _BIG:
            resp.data = _task_bytes(task)
        else:
            resp.stream = _task_pieces(task)

    on_head = on_get

    def on_delete(self, req: falcon.Request, resp: falcon.Response, graph: str, task_id: str,
                  graphspace: str = DEFAULT_GRAPHSPACE) -> None:
        _check_scope(graph, graphspace)
        tid = _task_id(task_id)
        force = _bool(req, "force")
        with _lane(self.lanes):
            self.manager.delete(tid, force=force, graph=graph, graphspace=graphspace)
        resp.status = falcon.HTTP_204

    def on_put(self, req: falcon.Request, resp: falcon.Response, graph: str, task_id: str,
               graphspace: str = DEFAULT_GRAPHSPACE) -> None:
        _check_scope(graph, graphspace)
        tid = _task_id(task_id)
        action = _one(req, "action")
        scope = {"graph": graph, "graphspace": graphspace}
        if action not in ("cancel", "suspend", "resume"):
            raise _bad_request(
                f"parameter 'action' must be cancel, suspend or resume, got {_shown(action)}"
                if action is not None
                else "parameter 'action' is required: cancel, suspend or resume"
            )
        with _lane(self.lanes):
            if action == "cancel":
                resp.media = {"cancelled": self.manager.cancel(tid, **scope)}
            elif action == "suspend":
                self.manager.suspend(tid, **scope)
                resp.media = {"suspended": True}
            else:
                self.manager.resume(tid, **scope)
                resp.media = {"resumed": True}
        resp.status = falcon.HTTP_202


def _json_type(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON: ``application/json`` or any ``+json`` type, parameters
    allowed."""
    if not content_type:
        return False
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 4000:
        raise ValueError(f"a number of {len(text)} digits is longer than 4000 digits")
    return int(text)


class JobsResource(_Resource):
    def __init__(self, manager: TaskManager, max_body: int, lanes: WriteLanes | None) -> None:
        super().__init__(manager)
        self.max_body = max_body
        self.lanes = lanes

    def on_post(self, req: falcon.Request, resp: falcon.Response, graph: str, task_type: str,
                graphspace: str = DEFAULT_GRAPHSPACE) -> None:
        _check_scope(graph, graphspace)
        spec = self.manager.task_types.get(task_type)
        if spec is None or not spec.http:
            raise ApiError(
                falcon.HTTP_404,
                "UnknownTaskType",
                f"Task type {_shown(task_type)} can't be submitted over HTTP: it is not registered, "
                "or not registered with http=True",
            )
        name = _one(req, "name")
        if name is not None and CONTROL.search(name):
            raise _bad_request(f"name must not hold control characters, got {_shown(name)}")
        length = req.content_length
        chunked = "chunked" in req.env.get("HTTP_TRANSFER_ENCODING", "").lower()
        if (length or chunked) and not _json_type(req.content_type):
            raise ApiError(
                falcon.HTTP_415, "UnsupportedMediaType",
                "the request body must be JSON sent with Content-Type: application/json, got "
                + ("no Content-Type" if not req.content_type else _shown(req.content_type)),
            )
        if length is not None and length > self.max_body:
            raise _too_large(length, self.max_body, self.manager.max_input_size)
        raw = req.bounded_stream.read(self.max_body + 1)
        if len(raw) > self.max_body:
            raise _too_large(len(raw), self.max_body, self.manager.max_input_size)
        value: Any = None
        if raw.strip():
            try:
                value = json.loads(raw.decode("utf-8"), parse_int=_bounded_int, parse_constant=_no_constant)
            except (UnicodeDecodeError, ValueError) as exc:
                raise _bad_request(f"the request body is not valid JSON: {printable(str(exc), 200)}") from None
            except RecursionError:
                raise _bad_request("the request body is nested too deeply") from None
        with _lane(self.lanes):
            tid = self.manager.submit(task_type, value, name=name, graph=graph, graphspace=graphspace)
        resp.status = falcon.HTTP_201
        resp.media = {"task_id": tid}


def _too_large(size: int, limit: int, input_limit: int) -> ApiError:
    return ApiError(falcon.HTTP_413, "LimitExceeded",
                    f"Request body size {size} exceeded limit {limit} bytes (the task input limit, "
                    f"{input_limit} bytes, and a margin for JSON)")


class VersionsResource:
    BODY = json.dumps(
        {"versions": {"version": "v1", "core": API_CORE_VERSION, "api": API_CORE_VERSION, "taskmgr": __version__}}
    ).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.BODY

    on_head = on_get


class OpenAPIResource:
    def __init__(self) -> None:
        document = json.loads(resources.files("taskmgr").joinpath("openapi.json").read_bytes())
        document["info"]["version"] = __version__
        self.document = json.dumps(document).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.document

    on_head = on_get


# ------------------------------------------------------------- write lanes
class WriteLanes:
    """At most ``lanes`` requests at a time wait on the store to write; the others are refused at once.

    A write blocked by another connection's write lock holds its request
    thread for up to the store's busy timeout. Without a bound, a burst of
    such writes would take every request thread and reads would queue behind
    them. A write that finds every lane taken waits for one at most
    :attr:`WAIT` seconds, and not at all when a lane has been held longer than
    that (the store is stuck, not busy): it is answered 503 ``StoreBusy``
    with ``Retry-After``, having changed nothing.
    """

    WAIT = 0.05

    def __init__(self, lanes: int) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes!r}")
        self.lanes = lanes
        self._free = threading.Semaphore(lanes)
        self._since: dict[int, float] = {}  # thread -> when it took its lane

    def __enter__(self) -> None:
        if not self._free.acquire(blocking=False):
            now = time.monotonic()
            oldest = min(list(self._since.values()), default=now)
            if now - oldest >= self.WAIT or not self._free.acquire(timeout=self.WAIT):
                raise ApiError(
                    falcon.HTTP_503, "StoreBusy",
                    f"{self.lanes} requests are already waiting to write to the task store; nothing was "
                    "written: retry later",
                    headers={"Retry-After": "1"},
                )
        self._since[threading.get_ident()] = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self._since.pop(threading.get_ident(), None)
        self._free.release()


class _NoLane:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LANE = _NoLane()


def _lane(lanes: WriteLanes | None) -> WriteLanes | _NoLane:
    return _NO_LANE if lanes is None else lanes


# ----------------------------------------------------------------- middleware
def credentials_match(header: str | None, expected: bytes) -> bool:
    """Whether an ``Authorization`` header carries the Basic credentials ``expected``
    (``b"user:password"``), compared in constant time."""
    scheme, _, token = (header or "").partition(" ")
    given = b""
    if scheme.lower() == "basic":
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
    return hmac.compare_digest(given, expected)


def unauthorized() -> ApiError:
    return ApiError(
        falcon.HTTP_401,
        "Unauthorized",
        "authentication required: send HTTP Basic credentials",
        headers={"WWW-Authenticate": 'Basic realm="taskmgr", charset="UTF-8"'},
    )


class BasicAuth:
    """HTTP Basic authentication for every route but the public ones."""

    def __init__(self, user: str, password: str) -> None:
        self._expected = f"{user}:{password}".encode()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in _PUBLIC or req.method == "OPTIONS":
            return
        if not credentials_match(req.get_header("Authorization"), self._expected):
            raise unauthorized()


def host_name(host: str) -> str:
    """The name in a Host header, without its port or brackets, in lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_refused(host: str | None, allowed: Collection[str] | None) -> ApiError | None:
    """The 403 for a Host header that is not one of ``allowed`` (None: any), else None."""
    if allowed is None or host is None or host_name(host) in allowed:
        return None
    return ApiError(falcon.HTTP_403, "Forbidden",
                    f"this server does not answer to Host {_shown(host)}: while it listens on loopback it "
                    "answers to loopback names only (taskmgr serve --allow-host NAME accepts another)")


def cross_site(env: dict[str, Any]) -> ApiError | None:
    """The 403 for a request that a browser says comes from another site's page, else None."""
    site = env.get("HTTP_SEC_FETCH_SITE")
    origin = env.get("HTTP_ORIGIN")
    if site is not None and site not in ("same-origin", "none"):
        pass
    elif origin is not None and (origin == "null" or origin.split("://", 1)[-1].lower()
                                 != env.get("HTTP_HOST", "").lower()):
        pass
    else:
        return None
    return ApiError(falcon.HTTP_403, "Forbidden",
                    "cross-site request refused: a page from "
                    f"{_shown(origin) if origin is not None else 'another site'} cannot change tasks here")


class RequestGuard:
    """What every request is checked for before it reaches a route: a Host this server answers
    to, no cross-site write, and a path and query string that are UTF-8 once percent-decoded
    (Falcon would decode them leniently, into U+FFFD, and act on a name nobody sent)."""

    def __init__(self, allowed_hosts: Collection[str] | None) -> None:
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        env = req.env
        refused = host_refused(env.get("HTTP_HOST"), self.allowed_hosts)
        if refused is None and req.method not in _SAFE_METHODS:
            refused = cross_site(env)
        if refused is not None:
            raise refused
        raw_path = env.get("PATH_INFO", "")
        raw_query = env.get("QUERY_STRING", "")
        if raw_path.isascii() and "%" not in raw_path and raw_query.isascii() and "%" not in raw_query:
            return
        try:
            unquote_to_bytes(raw_path.encode("latin-1", "replace")).decode("utf-8")
            unquote_to_bytes(raw_query.encode("latin-1", "replace").replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_request("the request's path or query string is not valid UTF-8") from None


class RequestLog:
    """One log line per request: address, method, path and query (control characters escaped,
    at most 300 characters), status, milliseconds. Never a header.

    The line goes to ``sink`` when one is given (``taskmgr serve`` gives a batching writer: a
    log record costs a request more than its route), else to the ``taskmgr.rest`` logger."""

    def __init__(self, sink: Callable[[str], None] | None = None) -> None:
        self.sink = sink

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        if self.sink is None and not log.isEnabledFor(logging.INFO):
            return
        started = getattr(req.context, "started", None)
        ms = 0.0 if started is None else (time.perf_counter() - started) * 1000
        query = req.query_string
        target = printable(f"{req.path}?{query}" if query else req.path, _LOG_TARGET)
        line = f"{req.remote_addr} {printable(req.method, 20)} {target} {resp.status} {ms:.1f}ms"
        if self.sink is None:
            log.info("%s", line)
        else:
            self.sink(line)


def create_app(
    manager: TaskManager,
    *,
    auth: tuple[str, str] | None = None,
    log_requests: bool = True,
    allowed_hosts: Collection[str] | None = None,
    write_lanes: int | None = None,
    access_log: Callable[[str], None] | None = None,
) -> falcon.App:
    """The WSGI application serving ``manager``'s tasks over the contract's REST API.

    :param auth: ``(user, password)`` to require HTTP Basic authentication.
    :param log_requests: log one line per request to ``taskmgr.rest``.
    :param allowed_hosts: the host names (lower case, without port) a request's ``Host`` header
        may name; others are refused with 403 (a defence against DNS rebinding). None: any.
    :param write_lanes: how many requests may wait on the store to write at once (see
        :class:`WriteLanes`); None: no bound.
    :param access_log: where the request lines go instead of the ``taskmgr.rest`` logger.
    """
    middleware: list[Any] = []
    if log_requests:
        middleware.append(RequestLog(access_log))
    if auth is not None:
        middleware.append(BasicAuth(*auth))
    middleware.append(RequestGuard(allowed_hosts))
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.keep_blank_qs_values = True
    app.set_error_serializer(_serialize_error)

    def library_error(req: falcon.Request, resp: falcon.Response, exc: TaskManagerError, params: dict) -> None:
        raise _from_library(exc)

    def unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict) -> None:
        if isinstance(exc, falcon.HTTPError):
            raise exc
        # falcon calls error handlers inside its own except block: exc_info is this error's
        log.exception("unexpected error answering %s %s", printable(req.method, 20),  # noqa: LOG004
                      printable(req.path, _LOG_TARGET))
        raise ApiError(falcon.HTTP_500, "InternalError", "internal error: see the server log")

    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(TaskManagerError, library_error)

    lanes = None if write_lanes is None else WriteLanes(write_lanes)
    tasks, task = TasksResource(manager), TaskResource(manager, lanes)
    jobs = JobsResource(manager, body_limit(manager.max_input_size), lanes)
    for prefix in ("/graphspaces/{graphspace}/graphs/{graph}", "/graphs/{graph}"):
        app.add_route(f"{prefix}/tasks", tasks)
        app.add_route(f"{prefix}/tasks/{{task_id}}", task)
        app.add_route(f"{prefix}/jobs/{{task_type}}", jobs)
    app.add_route("/versions", VersionsResource())
    app.add_route("/openapi.json", OpenAPIResource())
    return app
