"""Hostile HTTP input: every parameter of every route with values meant to break it.

In-process (Falcon's test client) for the corpus, and against a live ``taskmgr
serve`` for what only a real socket can send: bytes that are not UTF-8, headers
too large, a client that sends half a request and stalls, a body announced
larger than the limit. Nothing may answer 5xx, and nothing refused may change
the store.
"""

from __future__ import annotations

import base64
import collections
import os
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


# ------------------------------------------------ a standing crowd of hostile clients (issue 16)
HOSTILE_SECONDS = float(os.environ.get("TASKMGR_HOSTILE_SECONDS", "3"))
AUTH = "Basic " + base64.b64encode(b"admin:pa55word").decode()
H = f"Host: 127.0.0.1\r\nAuthorization: {AUTH}\r\n"  # what a legitimate client sends
JSON_BODY = "Content-Type: application/json\r\n"


def _exchange(addr: tuple[str, int], raw: bytes, body_bytes: int = 0) -> int:
    """Send ``raw`` (then ``body_bytes`` of filler, as far as the server takes them) and return the
    answer's status (0 when the connection closed without one)."""
    with socket.create_connection(addr, timeout=WAIT) as s:
        s.sendall(raw)
        try:
            for _ in range(body_bytes // 65536):
                s.sendall(b"x" * 65536)
        except OSError:
            pass
        data = b""
        while b"\r\n" not in data:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
    return _status(data)


def _hostile_kinds(tid: int) -> dict[str, tuple[set[int], object]]:
    """Each kind of client: the answers it may get, and how it asks (raw bytes, or a callable)."""
    big = "9" * 5000
    past = base64.urlsafe_b64encode(f"taskmgr:{2**64}".encode()).decode().rstrip("=")
    return {
        "legit: GET a task": ({200}, f"GET /graphs/hugegraph/tasks/{tid} HTTP/1.1\r\n{H}\r\n"),
        "legit: HEAD a list": ({200}, f"HEAD /graphs/hugegraph/tasks HTTP/1.1\r\n{H}\r\n"),
        # (jobs that count to 0: no progress to write while the write lock is held elsewhere, where the
        # manager's housekeeping logs its refused write with a traceback)
        "legit: POST a job": ({201, 503}, f"POST /graphs/g/jobs/count HTTP/1.1\r\n{H}{JSON_BODY}"
                                          "Content-Length: 9\r\n\r\n{\"to\": 0}"),
        "legit: POST chunked": ({201, 503}, f"POST /graphs/g/jobs/count HTTP/1.1\r\n{H}{JSON_BODY}"
                                            "Transfer-Encoding: chunked\r\n\r\n9\r\n{\"to\": 0}\r\n0\r\n\r\n"),
        "no credentials: GET": ({401}, "GET /graphs/hugegraph/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        "no credentials: a body, never sent": ({401}, f"POST /graphs/g/jobs/count HTTP/1.1\r\nHost: 127.0.0.1"
                                                      f"\r\n{JSON_BODY}Content-Length: 1000000\r\n\r\n"),
        "wrong credentials": ({401}, "GET /graphs/hugegraph/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     "Authorization: Basic YWRtaW46bm9wZQ==\r\n\r\n"),
        "body announced over the limit": ({413}, f"POST /graphs/g/jobs/count HTTP/1.1\r\n{H}{JSON_BODY}"
                                                 "Content-Length: 2147483648\r\n\r\n"),
        "body sent over the limit": ({413}, (f"POST /graphs/g/jobs/count HTTP/1.1\r\n{H}{JSON_BODY}"
                                             "Content-Length: 41943040\r\n\r\n", 1024 * 1024)),
        "Content-Length of 5,000 digits": ({413}, f"POST /graphs/g/jobs/count HTTP/1.1\r\n{H}{JSON_BODY}"
                                                  f"Content-Length: {big}\r\n\r\n"),
        "body not sent as JSON": ({415}, f"POST /graphs/g/jobs/count HTTP/1.1\r\n{H}Content-Type: text/plain\r\n"
                                         "Content-Length: 2\r\n\r\n{}"),
        "cross-site page": ({403}, f"POST /graphs/g/jobs/count HTTP/1.1\r\n{H}{JSON_BODY}Origin: http://evil.example"
                                   "\r\nContent-Length: 2\r\n\r\n{}"),
        "DNS rebinding (foreign Host)": ({403}, f"GET /graphs/hugegraph/tasks HTTP/1.1\r\nHost: evil.example\r\n"
                                                f"Authorization: {AUTH}\r\n\r\n"),
        "id of 5,000 digits": ({400}, f"GET /graphs/hugegraph/tasks/{big} HTTP/1.1\r\n{H}\r\n"),
        "ids= of 5,000 digits": ({400}, f"GET /graphs/hugegraph/tasks?ids={big} HTTP/1.1\r\n{H}\r\n"),
        "page token past 2**63-1": ({400}, f"GET /graphs/hugegraph/tasks?page={past} HTTP/1.1\r\n{H}\r\n"),
        "body number of 5,000 digits": ({400}, f"POST /graphs/g/jobs/count HTTP/1.1\r\n{H}{JSON_BODY}"
                                               f"Content-Length: {len(big)}\r\n\r\n{big}"),
        "paging with limit=0": ({400}, f"GET /graphs/hugegraph/tasks?page=&limit=0 HTTP/1.1\r\n{H}\r\n"),
        "lenient limit": ({400}, f"GET /graphs/hugegraph/tasks?limit=%2B5 HTTP/1.1\r\n{H}\r\n"),
        "lenient status": ({400}, f"GET /graphs/hugegraph/tasks?status=%20success%20 HTTP/1.1\r\n{H}\r\n"),
        "Kelvin sign in a status": ({400}, f"GET /graphs/hugegraph/tasks?status=UN%E2%84%AANOWN HTTP/1.1\r\n{H}\r\n"),
        "escape sequence in a graph": ({400}, f"GET /graphs/x%1B%5D0%3Bpwned%07/tasks HTTP/1.1\r\n{H}\r\n"),
        "forged log line in a path": ({400}, f"GET /graphs/x%0A2026-01-01%20INFO%20forged/tasks HTTP/1.1\r\n{H}\r\n"),
        "control character in a name": ({400}, f"POST /graphs/g/jobs/count?name=a%1Bb HTTP/1.1\r\n{H}{JSON_BODY}"
                                               "Content-Length: 2\r\n\r\n{}"),
        "250 KB query string": ({431}, f"GET /graphs/hugegraph/tasks?status={'a' * 250_000} HTTP/1.1\r\n{H}\r\n"),
        "bad Content-Length": ({400}, f"POST /graphs/g/jobs/count HTTP/1.1\r\n{H}Content-Length: 1x\r\n\r\n"),
        "unknown transfer coding": ({400}, f"POST /graphs/g/jobs/count HTTP/1.1\r\n{H}Transfer-Encoding: gzip"
                                           "\r\n\r\n"),
        "garbage": ({400}, "\x00\x01\x02 nonsense \r\n\r\n"),
        "not UTF-8 in the path": ({400}, f"GET /graphs/%FF%FE/tasks HTTP/1.1\r\n{H}\r\n"),
        "method not allowed": ({405}, f"PATCH /graphs/hugegraph/tasks HTTP/1.1\r\n{H}\r\n"),
    }


@pytest.mark.slow
def test_a_crowd_of_hostile_clients_gets_4xx_and_the_others_are_still_served(db_path: str) -> None:
    """Every class of issue 16 at once for TASKMGR_HOSTILE_SECONDS (3): nothing answers 5xx but a
    write while the store's write lock is held elsewhere (503), legitimate clients keep getting
    answers, slow clients are timed out, and the log stays bounded."""
    import sqlite3
    import threading

    from test_serve import _serve

    seed = TaskManager(db_path)
    seed.register("stored", lambda ctx: 0)  # a type the server does not run: the records stay as they are
    tid = seed.submit("stored", name="a task")
    seed.submit_many("stored", ["y" * 2_000_000] * 4, graph="big")  # 8 MB lists, for clients that never read
    seed.shutdown()
    server = _serve(db_path, "--examples", "--header-timeout", "1", "--idle-timeout", "2", "--busy-timeout", "0.2",
                    env={"TASKMGR_AUTH": "admin:pa55word"})
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    addr = (host, int(port))
    kinds = _hostile_kinds(tid)
    counts: collections.Counter[tuple[str, int]] = collections.Counter()
    legit_slowest = 0.0
    stallers, hogs = [], []
    try:
        for _ in range(60):  # half a header each, then silence
            s = socket.create_connection(addr, timeout=WAIT)
            s.sendall(f"GET /graphs/hugegraph/tasks HTTP/1.1\r\n{H}".encode())
            stallers.append(s)
        for _ in range(3):  # ask for a long list, never read it
            s = socket.create_connection(addr, timeout=WAIT)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET /graphs/big/tasks?limit=-1 HTTP/1.1\r\n{H}\r\n".encode())
            hogs.append(s)
        locked = threading.Event()

        def hold_the_write_lock() -> None:  # what a backup or a sqlite3 shell does, for a while
            time.sleep(HOSTILE_SECONDS / 4)
            holder = sqlite3.connect(db_path, timeout=5)
            holder.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(2.5)  # longer than a write's tries (0.2 s busy timeouts): writes answer 503 meanwhile
            holder.rollback()
            holder.close()
            locked.clear()

        lock_thread = threading.Thread(target=hold_the_write_lock)
        lock_thread.start()
        deadline = time.monotonic() + HOSTILE_SECONDS
        while time.monotonic() < deadline:
            for kind, (allowed, request) in kinds.items():
                raw, filler = request if isinstance(request, tuple) else (request, 0)
                t0 = time.monotonic()
                status = _exchange(addr, raw.encode("latin-1") if isinstance(raw, str) else raw, filler)
                if kind.startswith(("legit: GET", "legit: HEAD")):
                    legit_slowest = max(legit_slowest, time.monotonic() - t0)
                counts[(kind, status)] += 1
                assert status in allowed, f"{kind}: answered {status}, expected one of {sorted(allowed)}"
        lock_thread.join(WAIT)
        for s in stallers:  # timed out by the server, with a JSON 408
            assert _status(s.recv(65536)) == 408
        counts[("slow header (stalled connection)", 408)] += len(stallers)
        counts[("never reads its answer", 0)] += len(hogs)
    except BaseException:
        server.proc.kill()  # a failed check must not leave the server running
        server.proc.wait(WAIT)
        raise
    finally:
        for s in stallers + hogs:
            s.close()
    assert server.proc.poll() is None, "the server died"
    rc, _, err = server.stop()
    total = sum(counts.values())
    by_status = collections.Counter()
    for (_, status), n in counts.items():
        by_status[status] += n
    print(f"\n{total} hostile requests in {HOSTILE_SECONDS:g} s; by answer: "
          + ", ".join(f"{s or 'closed'}: {n}" for s, n in sorted(by_status.items())))
    for kind in sorted({k for k, _ in counts}):
        print(f"  {kind:40s} " + ", ".join(f"{s or 'closed'}: {n}" for (k, s), n in sorted(counts.items()) if k == kind))
    print(f"  slowest legitimate read {legit_slowest * 1e3:.0f} ms; log {len(err) / total:.0f} bytes a request")
    assert not any(500 <= s < 600 and s != 503 for s in by_status)
    assert all(s == 503 and k.startswith("legit: POST") for (k, s) in counts if 500 <= s < 600)
    assert rc == 0, err[-2000:]
    assert "Traceback" not in err, err[max(0, err.find("Traceback") - 1000):][:4000]
    assert legit_slowest < 5, "a legitimate reader waited behind the hostile clients"
    assert counts[("legit: POST a job", 503)] + counts[("legit: POST chunked", 503)], "the write lock was never met"
    assert len(err) / total < 400, "the log grew by more than a line a request"
