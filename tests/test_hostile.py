"""Hostile HTTP input: every parameter of every route with values meant to break it.

In-process (Falcon's test client) for the corpus, and against a live ``taskmgr
serve`` for what only a real socket can send: bytes that are not UTF-8, headers
too large, a client that sends half a request and stalls, a body announced
larger than the limit. Nothing may answer 5xx, and nothing refused may change
the store.
"""

from __future__ import annotations

import collections
import socket
import time

import pytest

falcon = pytest.importorskip("falcon")
from falcon import testing  # noqa: E402

from conftest import WAIT  # noqa: E402
from taskmgr import TaskManager  # noqa: E402
from taskmgr.rest import create_app  # noqa: E402

HOSTILE = [
    "", " ", "-1", "-2", "0", "1e9", "99999999999999999999999999", "NaN", "true", "null", "[]", "{}",
    "'; DROP TABLE taskmgr_task; --", "1 OR 1=1", "1' OR '1'='1", "../../etc/passwd", "..%2f..%2fetc",
    "%00", "\x00", "\u202e", "\ud7ff", "A" * 10_000, "<script>alert(1)</script>", "${jndi:ldap://x}",
    "__import__('os').system('true')", "os.system", "taskmgr.examples.count", "%ff%fe", "\u00ff",
]
PREFIXES = ["/graphspaces/DEFAULT/graphs/hugegraph", "/graphs/hugegraph"]


@pytest.fixture
def target(mgr: TaskManager):
    mgr.register("job", lambda ctx: ctx.input, http=True)
    ids = mgr.submit_many("echo", range(3))
    mgr.wait(ids[-1], WAIT)
    return testing.TestClient(create_app(mgr, log_requests=False)), ids


def _snapshot(mgr: TaskManager) -> list[dict]:
    return [t.to_dict() for t in mgr.list(limit=-1)]


def test_a_corpus_of_hostile_values_in_every_parameter_gets_4xx_and_changes_nothing(target, mgr: TaskManager) -> None:
    client, ids = target
    before = _snapshot(mgr)
    outcomes: collections.Counter[int] = collections.Counter()
    tried = 0

    def send(method: str, path: str, **kwargs) -> None:
        nonlocal tried
        resp = client.simulate_request(method, path, **kwargs)
        tried += 1
        outcomes[resp.status_code] += 1
        assert resp.status_code < 500, (method, path, kwargs, resp.text)
        assert resp.status_code == 204 or "exception" in resp.json or resp.status_code < 300

    for value in HOSTILE:
        for prefix in PREFIXES:
            for name in ("status", "limit", "page", "ids"):
                send("GET", f"{prefix}/tasks", params={name: value})
            send("GET", f"{prefix}/tasks/{value}")
            send("DELETE", f"{prefix}/tasks/{value}")
            if value.lower() not in ("true", "false"):  # a valid force would delete the finished task
                send("DELETE", f"{prefix}/tasks/{ids[0]}", params={"force": value})
            send("PUT", f"{prefix}/tasks/{ids[0]}", params={"action": value})
            send("PUT", f"{prefix}/tasks/{value}", params={"action": "cancel"})
            send("POST", f"{prefix}/jobs/{value}", body=b"{}", headers={"Content-Type": "application/json"})
            send("GET", f"/graphspaces/{value}/graphs/{value}/tasks")
            send("POST", f"{prefix}/jobs/job", body=value.encode("utf-8", "surrogatepass")[:1000] + b"}",
                 headers={"Content-Type": "application/json"})
    # refused requests changed nothing (the finished tasks cannot be cancelled, the hostile ids do not exist)
    assert _snapshot(mgr) == before
    print(f"\n{tried} hostile requests: " + ", ".join(f"{code}: {n}" for code, n in sorted(outcomes.items())))
    assert set(outcomes) <= {200, 400, 404, 405, 413}


def test_a_body_nested_too_deeply_is_a_400_not_a_crash(target, mgr: TaskManager) -> None:
    client, _ = target
    before = _snapshot(mgr)
    resp = client.simulate_post("/graphs/hugegraph/jobs/job", body=b"[" * 200_000 + b"]" * 200_000,
                                  headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json["message"] == "the request body is nested too deeply"
    assert _snapshot(mgr) == before


def test_a_lone_surrogate_in_a_body_is_a_400_that_names_it(target, mgr: TaskManager) -> None:
    # valid JSON (an escape), but no UTF-8 text can hold it: refused, not a 500, nothing stored
    client, _ = target
    before = _snapshot(mgr)
    resp = client.simulate_post("/graphs/hugegraph/jobs/job", body=b'{"text": "a\\ud800"}',
                                  headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json["message"].startswith("task input holds a lone surrogate ('\\ud800')")
    assert _snapshot(mgr) == before


def test_graph_names_are_data_not_code(target, mgr: TaskManager) -> None:
    client, _ = target
    evil = "x'; DROP TABLE taskmgr_task; --"
    resp = client.simulate_post(f"/graphspaces/{evil}/graphs/{evil}/jobs/job", json={"a": 1})
    assert resp.status_code == 201
    task = mgr.wait(resp.json["task_id"], WAIT)
    assert task.graph == evil and task.graphspace == evil
    assert client.simulate_get(f"/graphspaces/{evil}/graphs/{evil}/tasks").json["tasks"][0]["id"] == task.id


# ------------------------------------------------------------ a real socket
@pytest.fixture
def live(db_path: str):
    from test_serve import _serve

    server = _serve(db_path, "--examples")
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    yield server, host, int(port)
    if server.proc.poll() is None:
        server.stop()


def _raw(host: str, port: int, data: bytes, read: bool = True) -> bytes:
    with socket.create_connection((host, port), timeout=WAIT) as s:
        s.sendall(data)
        if not read:
            return b""
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


@pytest.mark.slow
def test_what_only_a_socket_can_send_is_refused_and_the_server_keeps_serving(live) -> None:
    server, host, port = live
    ok = b"GET /graphs/hugegraph/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    # a client that sends half a request and stalls must not block the others
    staller = socket.create_connection((host, port), timeout=WAIT)
    staller.sendall(b"GET /graphs/hugegraph/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        codes = {
            "not UTF-8 in the path": _status(_raw(host, port, b"GET /graphs/\xff\xfe/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                              b"Connection: close\r\n\r\n")),
            "not UTF-8 in the query": _status(_raw(host, port, b"GET /graphs/g/tasks?status=%ff HTTP/1.1\r\nHost: 127.0.0.1"
                                                               b"\r\nConnection: close\r\n\r\n")),
            "a huge header": _status(_raw(host, port, b"GET /versions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
                                          + b"a" * 400_000 + b"\r\nConnection: close\r\n\r\n")),
            "a body announced over the limit": _status(_raw(
                host, port, b"POST /graphs/g/jobs/count HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999\r\n"
                            b"Connection: close\r\n\r\n{}")),
            "garbage": _status(_raw(host, port, b"\x00\x01\x02 nonsense \r\n\r\n")),
        }
        assert codes["not UTF-8 in the path"] == 400
        assert codes["not UTF-8 in the query"] == 400
        assert all(400 <= c < 500 or c == 0 for c in codes.values()), codes
        started = time.monotonic()
        assert _status(_raw(host, port, ok)) == 200
        assert time.monotonic() - started < WAIT
    finally:
        staller.close()
    assert server.proc.poll() is None, "the server died"
    rc, _, err = server.stop()
    assert rc == 0
    assert "Traceback" not in err

