"""`taskmgr serve` against clients that misbehave: real sockets on 127.0.0.1, a real server process.

Each test is one defect of issue 16 (bodies buffered before any limit, slow
clients starving the others, a held write lock stalling reads, waitress's
plain-text answers, a list failing part-way), checked from the outside.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import sqlite3
import threading
import time

import pytest

pytest.importorskip("falcon")
pytest.importorskip("waitress")

from conftest import WAIT
from taskmgr import TaskManager
from test_serve import _serve

pytestmark = pytest.mark.slow


def _addr(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _answer(sock: socket.socket, timeout: float = WAIT) -> tuple[int, dict, bytes]:
    """Read one answer (status, headers, body) from ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split(" ", 2)[1]), headers, body


def _json_error(status: int, body: bytes) -> dict:
    obj = json.loads(body)
    assert set(obj) == {"exception", "message", "cause"}, obj
    assert 400 <= status < 500
    return obj


@pytest.fixture
def live(db_path: str):
    server = _serve(db_path, "--examples")
    yield server
    if server.proc.poll() is None:
        server.stop()


# ------------------------------------------------------------------ item 1: bodies
@pytest.mark.parametrize("length", [100 * 1024 * 1024, 2 * 1024**3, int("9" * 50)])
def test_a_content_length_over_the_limit_is_answered_413_before_any_body(live, length: int) -> None:
    with socket.create_connection(_addr(live), timeout=WAIT) as s:
        s.sendall(f"POST /graphs/g/jobs/count HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {length}\r\n\r\n".encode())
        status, headers, body = _answer(s, timeout=5)
    assert status == 413 and headers["content-type"] == "application/json"
    assert _json_error(status, body)["exception"] == "LimitExceeded"


def test_a_client_sending_a_body_over_the_limit_still_reads_its_413(live) -> None:
    with socket.create_connection(_addr(live), timeout=WAIT) as s:
        s.sendall(b"POST /graphs/g/jobs/count HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 67108864\r\n\r\n")
        sent = 0
        try:  # the server drops what follows for a while (a lingering close) instead of resetting
            while sent < 8 * 1024 * 1024:
                sent += s.send(b"x" * 65536)
        except OSError:
            pass
        status, _, body = _answer(s, timeout=5)
    assert status == 413 and _json_error(status, body)["exception"] == "LimitExceeded"


def test_a_body_without_credentials_is_refused_401_before_it_is_read(db_path: str) -> None:
    server = _serve(db_path, "--examples", env={"TASKMGR_AUTH": "admin:pa55word"})
    try:
        with socket.create_connection(_addr(server), timeout=WAIT) as s:
            s.sendall(b"POST /graphs/g/jobs/count HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                      b"\r\nContent-Length: 1000000\r\n\r\n")  # and no body
            status, headers, body = _answer(s, timeout=5)
        assert status == 401 and headers["www-authenticate"].startswith("Basic")
        assert _json_error(status, body)["exception"] == "Unauthorized"
    finally:
        rc, _, err = server.stop()
    assert "401" in err and "pa55word" not in err


# -------------------------------------------------------- item 10: waitress's own answers
@pytest.mark.parametrize(("raw", "status"), [
    (b"POST /graphs/g/jobs/count HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /graphs/g/jobs/count HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     400),
    (b"GET /versions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
    (b"POST /graphs/g/jobs/count HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"\x00\x01\x02 nonsense\r\nHost: x\r\n\r\n", 400),
    (b"GET /versions HTTP/1.1\r\nBad Header Line\r\n\r\n", 400),
])
def test_what_waitress_refuses_itself_is_answered_with_the_contract_s_json(live, raw: bytes, status: int) -> None:
    with socket.create_connection(_addr(live), timeout=WAIT) as s:
        s.sendall(raw)
        got, headers, body = _answer(s, timeout=5)
    assert got == status and headers["content-type"] == "application/json", body
    _json_error(got, body)


def test_head_answers_on_a_real_socket(live) -> None:
    conn = http.client.HTTPConnection(*_addr(live), timeout=WAIT)
    conn.request("HEAD", "/graphs/hugegraph/tasks")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b""


# ------------------------------------------------------------- item 3: slow clients
def test_clients_that_send_half_a_header_neither_starve_the_others_nor_stay(db_path: str) -> None:
    server = _serve(db_path, "--examples", "--header-timeout", "1")
    stallers: list[socket.socket] = []
    silent: list[socket.socket] = []
    try:
        for _ in range(120):  # more than waitress's default connection limit of 100
            s = socket.create_connection(_addr(server), timeout=WAIT)
            s.sendall(b"GET /graphs/hugegraph/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            stallers.append(s)
        silent += [socket.create_connection(_addr(server), timeout=WAIT) for _ in range(40)]  # never a byte
        started = time.monotonic()
        conn = http.client.HTTPConnection(*_addr(server), timeout=WAIT)
        conn.request("GET", "/graphs/hugegraph/tasks")
        assert conn.getresponse().status == 200
        assert time.monotonic() - started < 3, "a normal client waited behind the stalled ones"
        status, _, body = _answer(stallers[0], timeout=5)  # timed out by the server, with a reason
        assert status == 408 and _json_error(status, body)["exception"] == "RequestTimeout"
        for s in silent:  # closed by the server, not left to hold a connection for the idle timeout
            s.settimeout(5)
            assert s.recv(1) == b""
    finally:
        for s in stallers + silent:
            s.close()
        server.stop()


def test_a_client_that_reads_nothing_of_a_big_answer_lets_its_thread_go(db_path: str) -> None:
    seed = TaskManager(db_path, max_input_size=2 * 1024 * 1024)
    seed.register("big", lambda ctx: None)
    seed.submit_many("big", ["x" * 1_500_000] * 24, graph="g")  # a list of about 36 MB
    seed.shutdown()
    server = _serve(db_path, "--threads", "1", "--idle-timeout", "1")
    try:
        hog = socket.create_connection(_addr(server), timeout=WAIT)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.sendall(b"GET /graphs/g/tasks?limit=-1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never reads
        time.sleep(0.5)
        started = time.monotonic()
        conn = http.client.HTTPConnection(*_addr(server), timeout=WAIT)
        conn.request("GET", "/versions")
        assert conn.getresponse().status == 200
        assert time.monotonic() - started < 5, "the only request thread stayed with a client that reads nothing"
        hog.close()
    finally:
        server.stop()


# -------------------------------------------------------- item 4: a held write lock
def test_a_held_write_lock_makes_writes_503_within_the_busy_timeout_while_reads_go_on(db_path: str) -> None:
    server = _serve(db_path, "--examples", "--busy-timeout", "0.5")
    host, port = _addr(server)
    holder = sqlite3.connect(db_path, timeout=1)
    try:
        holder.execute("BEGIN IMMEDIATE")  # what a backup or a sqlite3 shell does
        writes: list[tuple[int, float]] = []

        def post() -> None:
            conn = http.client.HTTPConnection(host, port, timeout=60)
            t0 = time.monotonic()
            conn.request("POST", "/graphs/g/jobs/count", body=b"{}", headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            writes.append((resp.status, time.monotonic() - t0))

        posters = [threading.Thread(target=post) for _ in range(12)]
        for t in posters:
            t.start()
        time.sleep(0.1)
        reads = []
        conn = http.client.HTTPConnection(host, port, timeout=60)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            conn.request("GET", "/graphs/g/tasks?limit=1")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            reads.append(time.monotonic() - t0)
        for t in posters:
            t.join(60)
    finally:
        holder.rollback()
        holder.close()
        server.stop()
    reads.sort()
    p99 = reads[int(0.99 * (len(reads) - 1))]
    print(f"\nwrite lock held: {len(writes)} POSTs, statuses {sorted(s for s, _ in writes)}, slowest "
          f"{max(d for _, d in writes):.2f} s; {len(reads)} reads meanwhile, p50 {reads[len(reads) // 2] * 1e3:.1f} ms, "
          f"p99 {p99 * 1e3:.1f} ms")
    assert {s for s, _ in writes} == {503}
    # the store tries a locked write four times (two busy timeouts each, measured): far less than the 40 s of
    # a 5 s timeout, and no wait at all for the writes refused by the lanes
    assert max(d for _, d in writes) < 12, "a write took far longer than the store's retries of its timeout"
    assert p99 < 1.0, "reads queued behind the blocked writes"


# -------------------------------------------------------- item 7: a list failing part-way
def test_a_list_that_fails_part_way_ends_so_that_no_client_takes_it_for_whole(mgr: TaskManager, caplog) -> None:
    import logging

    from taskmgr.rest import TasksResource, create_app
    from taskmgr.server import make_server

    # about 4 KB a task: the answer's first 64 KiB go out during the third read (of 2, 8, 8 tasks)
    ids = mgr.submit_many("echo", [f"{i:05}" + "x" * 2000 for i in range(40)])
    mgr.wait(ids[-1], WAIT)
    real, calls = mgr.list, []
    fail_at = [4]

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at[0]:
            from taskmgr import StoreError

            raise StoreError("the task database refused the read: database disk image is malformed")
        return real(*args, **kwargs)

    mgr.list = failing
    server = make_server(create_app(mgr), host="127.0.0.1", port=0, threads=2, body_limit=1 << 20,
                         input_limit=1 << 20)
    runner = threading.Thread(target=server.run, daemon=True)
    runner.start()
    try:
        for version in ("HTTP/1.1", "HTTP/1.0"):
            calls.clear()
            with socket.create_connection(("127.0.0.1", server.effective_port), timeout=WAIT) as s, \
                    caplog.at_level(logging.ERROR):
                s.sendall(f"GET /graphs/hugegraph/tasks?limit=-1 {version}\r\nHost: 127.0.0.1\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(f"{version} 200".encode())
            if version == "HTTP/1.1":
                assert b"transfer-encoding: chunked" in head.lower() and not body.endswith(b"0\r\n\r\n")
            with pytest.raises(ValueError):
                json.loads(body)  # never a complete-looking answer
            assert len(calls) == 4 and TasksResource.CHUNK < 40
        assert "a list failed after its answer had begun" in caplog.text
        fail_at[0] = 2  # before the answer has begun: a proper error status
        calls.clear()
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=WAIT)
        conn.request("GET", "/graphs/hugegraph/tasks?limit=-1")
        resp = conn.getresponse()
        assert resp.status == 503 and json.loads(resp.read())["exception"] == "StoreError"
    finally:
        del mgr.list
        server.close()


def test_basic_credentials_are_checked_before_the_body_on_every_route(db_path: str) -> None:
    server = _serve(db_path, "--examples", env={"TASKMGR_AUTH": "admin:pa55word"})
    good = "Basic " + base64.b64encode(b"admin:pa55word").decode()
    try:
        conn = http.client.HTTPConnection(*_addr(server), timeout=WAIT)
        conn.request("POST", "/graphs/g/jobs/count", body=b'{"to": 1, "pause": 0}',
                     headers={"Content-Type": "application/json", "Authorization": good})
        assert conn.getresponse().status == 201
    finally:
        server.stop()


# ------------------------------------------------------- item 2: lists in bounded memory
def _peak_rss(pid: int) -> int:
    """The peak resident memory of a process so far, in bytes (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs /proc")
def test_a_long_list_of_big_tasks_is_answered_in_memory_bounded_by_a_few_records(db_path: str) -> None:
    record = 3 * 1024 * 1024
    seed = TaskManager(db_path, max_input_size=4 * 1024 * 1024)
    seed.register("big", lambda ctx: None)
    seed.submit_many("big", ["x" * record] * 24, graph="g")  # 72 MiB of inputs
    seed.shutdown()
    server = _serve(db_path)
    try:
        conn = http.client.HTTPConnection(*_addr(server), timeout=60)
        conn.request("GET", "/graphs/g/tasks?limit=1")
        conn.getresponse().read()
        before = _peak_rss(server.proc.pid)
        for query in ("limit=-1", "limit=100", "limit=20&page="):
            conn.request("GET", f"/graphs/g/tasks?{query}")
            resp = conn.getresponse()
            tasks = json.loads(resp.read())["tasks"]
            assert resp.status == 200 and len(tasks) in (20, 24) and len(tasks[0]["task_input"]) == record + 2
        grown = _peak_rss(server.proc.pid) - before
    finally:
        server.stop()
    print(f"\npeak resident memory grew {grown / 2**20:.1f} MiB answering lists of 24 tasks of 3 MiB")
    assert grown < 20 * record, f"the lists took {grown / 2**20:.0f} MiB: more than a few records at a time"


def test_the_access_log_writes_its_lines_in_order_in_the_log_s_format() -> None:
    import io

    from taskmgr.server import AccessLog

    stream = io.StringIO()
    log = AccessLog(stream)
    for i in range(500):
        log(f"127.0.0.1 GET /graphs/g/tasks/{i} 200 OK 0.1ms")
    log.close()
    lines = stream.getvalue().splitlines()
    assert [line.rsplit("/", 1)[1].split()[0] for line in lines] == [str(i) for i in range(500)]
    assert all(" INFO taskmgr.rest: 127.0.0.1 GET " in line for line in lines)


def test_a_chunked_body_is_cut_off_at_the_limit_with_a_json_413(mgr: TaskManager) -> None:
    from taskmgr.rest import create_app
    from taskmgr.server import make_server

    mgr.register("job", lambda ctx: ctx.input, http=True)
    server = make_server(create_app(mgr, log_requests=False), host="127.0.0.1", port=0, threads=2,
                         body_limit=64 * 1024, input_limit=32 * 1024)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", server.effective_port), timeout=WAIT) as s:
            s.sendall(b"POST /graphs/g/jobs/job HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            piece = b"x" * 16384
            try:
                for _ in range(16):  # 256 KiB, four times the limit
                    s.sendall(b"4000\r\n" + piece + b"\r\n")
            except OSError:
                pass
            status, headers, body = _answer(s, timeout=5)
        assert status == 413 and headers["content-type"] == "application/json"
        assert _json_error(status, body)["exception"] == "LimitExceeded"
        assert mgr.list(graph="g") == []
    finally:
        server.close()
