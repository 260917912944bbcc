"""The REST API of the contract (section 4) as a WSGI application over a TaskManager.

:func:`create_app` returns a Falcon application that a host can mount in its
own WSGI server; ``taskmgr serve`` runs it on waitress. Both come with the
``server`` extra (``pip install 'taskmgr[server]'``); the core does not need
them.

Routes (each also under the legacy prefix ``/graphs/{graph}``, which means
graphspace ``DEFAULT``):

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
valid credentials, 404 for what does not exist, 405 for a method a path does
not have, 413 for a body over the input limit. 503 means the store could not
be written (locked too long, disk full) and the request changed nothing; any
other 5xx is a bug, logged with its traceback.

With ``auth=(user, password)`` every route but ``/versions`` and
``/openapi.json`` needs HTTP Basic credentials (the graph database's clients
send them; ``/versions`` is read before they authenticate). Credentials are
compared in constant time and never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from importlib import resources
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import falcon

from . import __version__
from .errors import LimitExceeded, ManagerStateError, StoreError, TaskManagerError, TaskNotFound
from .manager import _MAX_ID, DEFAULT_GRAPHSPACE, TaskManager, encode_page
from .task import TaskPage

__all__ = ["create_app", "API_CORE_VERSION"]

log = logging.getLogger(__name__)

#: the HugeGraph release whose task API this server speaks (clients pick graphspace URLs from 1.7 on)
API_CORE_VERSION = "1.7.0"
_PUBLIC = frozenset({"/versions", "/openapi.json"})

_STATUS_OF: list[tuple[type[TaskManagerError], str]] = [
    (TaskNotFound, falcon.HTTP_404),
    (LimitExceeded, falcon.HTTP_413),
    (StoreError, falcon.HTTP_503),
    (ManagerStateError, falcon.HTTP_503),
    (TaskManagerError, falcon.HTTP_400),
]


class ApiError(falcon.HTTPError):
    """An error answered as the contract's JSON object."""

    def __init__(self, status: str, kind: str, message: str, cause: str = "", **kwargs: Any) -> None:
        super().__init__(status, title=kind, description=message, **kwargs)
        self.kind = kind
        self.message = message
        self.cause = cause


def _serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    if isinstance(exc, ApiError):
        body = {"exception": exc.kind, "message": exc.message, "cause": exc.cause}
    elif isinstance(exc, falcon.HTTPRouteNotFound):
        body = {"exception": "NotFound", "message": f"no such path: {req.path}", "cause": ""}
    elif isinstance(exc, falcon.HTTPMethodNotAllowed):
        allowed = dict(exc.headers or {}).get("Allow", "")
        body = {"exception": "MethodNotAllowed", "message": f"{req.path} does not accept {req.method}; it accepts "
                f"{allowed or 'nothing'}", "cause": ""}
    else:  # any other error Falcon raises itself
        kind = type(exc).__name__.removeprefix("HTTP")
        body = {"exception": kind, "message": exc.description or exc.title or kind, "cause": ""}
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(body, ensure_ascii=False)


def _from_library(exc: TaskManagerError) -> ApiError:
    for cls, status in _STATUS_OF:
        if isinstance(exc, cls):
            cause = "" if exc.__cause__ is None else str(exc.__cause__)
            return ApiError(status, type(exc).__name__, str(exc), cause)
    raise AssertionError("unreachable")  # pragma: no cover


def _bad_request(message: str) -> ApiError:
    return ApiError(falcon.HTTP_400, "InvalidArgument", message)


# ------------------------------------------------------------------ parameters
def _one(req: falcon.Request, name: str) -> str | None:
    values = req.params.get(name)
    if isinstance(values, list):
        raise _bad_request(f"parameter {name!r} was given {len(values)} times; give it once")
    return values


def _task_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= _MAX_ID:
        raise _bad_request(f"task id must be a positive integer, got {text!r}")
    return int(text)


def _limit(req: falcon.Request) -> int:
    text = _one(req, "limit")
    if text is None:
        return 100
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1 or value > _MAX_ID:
        raise _bad_request(f"limit must be -1 (no limit) or a non-negative integer, got {text!r}")
    return value


def _bool(req: falcon.Request, name: str) -> bool:
    text = _one(req, name)
    if text is None:
        return False
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise _bad_request(f"parameter {name!r} must be true or false, got {text!r}")


# ------------------------------------------------------------------ resources
class _Resource:
    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager


class TasksResource(_Resource):
    #: a list longer than this (or ``limit=-1``) is streamed, fetched this many tasks at a time,
    #: so a million-task answer never sits in memory whole
    CHUNK = 500

    def on_get(self, req: falcon.Request, resp: falcon.Response, graph: str,
               graphspace: str = DEFAULT_GRAPHSPACE) -> None:
        status = _one(req, "status")
        limit = _limit(req)
        page = _one(req, "page")
        raw_ids = req.params.get("ids")
        ids = None
        if raw_ids is not None:
            ids = [_task_id(i) for i in (raw_ids if isinstance(raw_ids, list) else [raw_ids])]
            if page is not None:
                raise _bad_request("ids cannot be combined with status or page: ask for the ids alone")
            tasks = self.manager.list(status=status, limit=limit, graph=graph, graphspace=graphspace, ids=ids)
            resp.media = {"tasks": [t.to_dict() for t in tasks]}
            return
        scope: dict[str, Any] = {"status": status, "graph": graph, "graphspace": graphspace}
        if limit != -1 and limit <= self.CHUNK:
            found = self.manager.list(limit=limit, page="" if page is None else page, **scope)
            body: dict[str, Any] = {"tasks": [t.to_dict() for t in found.tasks]}
            if page is not None:
                body["page"] = found.next_page
            resp.media = body
            return
        # the first chunk is read now, so that a bad parameter is still answered with a 400
        first = self.manager.list(limit=self.CHUNK, page="" if page is None else page, **scope)
        resp.content_type = falcon.MEDIA_JSON
        resp.stream = self._stream(first, limit, page is not None, scope)

    def _stream(self, found: TaskPage, limit: int, paged: bool, scope: dict[str, Any]) -> Iterator[bytes]:
        yield b'{"tasks": ['
        sent = 0
        while True:
            tasks = found.tasks if limit == -1 else found.tasks[: limit - sent]
            if tasks:
                yield ((b", " if sent else b"") + ", ".join(json.dumps(t.to_dict()) for t in tasks).encode())
                sent += len(tasks)
            if found.next_page is None or (limit != -1 and sent >= limit):
                break
            want = self.CHUNK if limit == -1 else min(self.CHUNK, limit - sent)
            found = self.manager.list(limit=want, page=found.next_page, **scope)
        if paged:
            after = found.next_page if len(tasks) == len(found.tasks) else encode_page(tasks[-1].id)
            yield b'], "page": ' + json.dumps(after).encode() + b"}"
        else:
            yield b"]}"


class TaskResource(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, graph: str, task_id: str,
               graphspace: str = DEFAULT_GRAPHSPACE) -> None:
        resp.media = self.manager.get(_task_id(task_id), graph=graph, graphspace=graphspace).to_dict()

    def on_delete(self, req: falcon.Request, resp: falcon.Response, graph: str, task_id: str,
                  graphspace: str = DEFAULT_GRAPHSPACE) -> None:
        tid = _task_id(task_id)
        force = _bool(req, "force")
        self.manager.delete(tid, force=force, graph=graph, graphspace=graphspace)
        resp.status = falcon.HTTP_204

    def on_put(self, req: falcon.Request, resp: falcon.Response, graph: str, task_id: str,
               graphspace: str = DEFAULT_GRAPHSPACE) -> None:
        tid = _task_id(task_id)
        action = _one(req, "action")
        scope = {"graph": graph, "graphspace": graphspace}
        if action == "cancel":
            resp.media = {"cancelled": self.manager.cancel(tid, **scope)}
        elif action == "suspend":
            self.manager.suspend(tid, **scope)
            resp.media = {"suspended": True}
        elif action == "resume":
            self.manager.resume(tid, **scope)
            resp.media = {"resumed": True}
        else:
            raise _bad_request(
                f"parameter 'action' must be cancel, suspend or resume, got {action!r}"
                if action is not None
                else "parameter 'action' is required: cancel, suspend or resume"
            )
        resp.status = falcon.HTTP_202


class JobsResource(_Resource):
    def __init__(self, manager: TaskManager, max_body: int) -> None:
        super().__init__(manager)
        self.max_body = max_body

    def on_post(self, req: falcon.Request, resp: falcon.Response, graph: str, task_type: str,
                graphspace: str = DEFAULT_GRAPHSPACE) -> None:
        spec = self.manager.task_types.get(task_type)
        if spec is None or not spec.http:
            raise ApiError(
                falcon.HTTP_404,
                "UnknownTaskType",
                f"Task type {task_type!r} can't be submitted over HTTP: it is not registered, "
                "or not registered with http=True",
            )
        name = _one(req, "name")
        length = req.content_length
        if length is not None and length > self.max_body:
            raise LimitExceeded("input", length, self.max_body)
        raw = req.bounded_stream.read(self.max_body + 1)
        if len(raw) > self.max_body:
            raise LimitExceeded("input", len(raw), self.max_body)
        value: Any = None
        if raw.strip():
            try:
                value = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise _bad_request(f"the request body is not valid JSON: {exc}") from None
            except RecursionError:
                raise _bad_request("the request body is nested too deeply") from None
        tid = self.manager.submit(task_type, value, name=name, graph=graph, graphspace=graphspace)
        resp.status = falcon.HTTP_201
        resp.media = {"task_id": tid}


class VersionsResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {
            "versions": {"version": "v1", "core": API_CORE_VERSION, "api": API_CORE_VERSION, "taskmgr": __version__}
        }


class OpenAPIResource:
    def __init__(self) -> None:
        document = json.loads(resources.files("taskmgr").joinpath("openapi.json").read_bytes())
        document["info"]["version"] = __version__
        self.document = json.dumps(document).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.document


# ----------------------------------------------------------------- middleware
class BasicAuth:
    """HTTP Basic authentication for every route but the public ones."""

    def __init__(self, user: str, password: str) -> None:
        self._expected = f"{user}:{password}".encode()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in _PUBLIC or req.method == "OPTIONS":
            return
        header = req.get_header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        given = b""
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(token.strip(), validate=True)
            except (binascii.Error, ValueError):
                given = b""
        if not hmac.compare_digest(given, self._expected):
            raise ApiError(
                falcon.HTTP_401,
                "Unauthorized",
                "authentication required: send HTTP Basic credentials",
                headers={"WWW-Authenticate": 'Basic realm="taskmgr", charset="UTF-8"'},
            )


class Utf8Only:
    """Refuse a path or query string that is not valid UTF-8 once percent-decoded.

    Falcon would decode it leniently (into U+FFFD) and the request would act
    on a name nobody sent.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw_path = req.env.get("PATH_INFO", "").encode("latin-1", "replace")
        raw_query = req.env.get("QUERY_STRING", "").encode("latin-1", "replace")
        try:
            unquote_to_bytes(raw_path).decode("utf-8")
            unquote_to_bytes(raw_query.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_request("the request's path or query string is not valid UTF-8") from None


class RequestLog:
    """One log line per request: method, path and query, status, milliseconds (never headers)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        started = getattr(req.context, "started", None)
        ms = 0.0 if started is None else (time.perf_counter() - started) * 1000
        target = req.path + (f"?{req.query_string}" if req.query_string else "")
        log.info("%s %s %s %s %.1fms", req.remote_addr, req.method, target, resp.status, ms)


def create_app(
    manager: TaskManager,
    *,
    auth: tuple[str, str] | None = None,
    log_requests: bool = True,
) -> falcon.App:
    """The WSGI application serving ``manager``'s tasks over the contract's REST API.

    :param auth: ``(user, password)`` to require HTTP Basic authentication.
    :param log_requests: log one line per request to ``taskmgr.rest``.
    """
    middleware: list[Any] = []
    if log_requests:
        middleware.append(RequestLog())
    if auth is not None:
        middleware.append(BasicAuth(*auth))
    middleware.append(Utf8Only())
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.keep_blank_qs_values = True
    app.set_error_serializer(_serialize_error)

    def library_error(req: falcon.Request, resp: falcon.Response, exc: TaskManagerError, params: dict) -> None:
        raise _from_library(exc)

    def unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict) -> None:
        if isinstance(exc, falcon.HTTPError):
            raise exc
        log.exception("unexpected error answering %s %s", req.method, req.path)
        raise ApiError(falcon.HTTP_500, "InternalError", "internal error: see the server log")

    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(TaskManagerError, library_error)

    tasks, task = TasksResource(manager), TaskResource(manager)
    jobs = JobsResource(manager, manager.max_input_size)
    for prefix in ("/graphspaces/{graphspace}/graphs/{graph}", "/graphs/{graph}"):
        app.add_route(f"{prefix}/tasks", tasks)
        app.add_route(f"{prefix}/tasks/{{task_id}}", task)
        app.add_route(f"{prefix}/jobs/{{task_type}}", jobs)
    app.add_route("/versions", VersionsResource())
    app.add_route("/openapi.json", OpenAPIResource())
    return app

