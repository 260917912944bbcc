"""The REST API in-process (Falcon's test client over a real manager): every route, parameter and error."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator

import pytest

falcon = pytest.importorskip("falcon")
from falcon import testing  # noqa: E402

from conftest import WAIT, Gates  # noqa: E402
from taskmgr import TaskManager, TaskStatus  # noqa: E402
from taskmgr.rest import create_app  # noqa: E402
from taskmgr.testing import rooms  # noqa: E402

S = TaskStatus
BASE = "/graphspaces/DEFAULT/graphs/hugegraph"
LEGACY = "/graphs/hugegraph"
STATUS_TEXT = (
    "Status value must be in [UNKNOWN, NEW, SCHEDULING, SCHEDULED, QUEUED, PENDING, RESTORING, RUNNING, "
    "SUCCESS, CANCELLING, CANCELLED, FAILED], but got 'xyz'"
)


@pytest.fixture
def client(mgr: TaskManager) -> testing.TestClient:
    mgr.register("job", lambda ctx: {"got": ctx.input}, http=True)
    mgr.register("private", lambda ctx: 1)
    return testing.TestClient(create_app(mgr))


def _error(resp, status: int, kind: str, message: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json == {"exception": kind, "message": message, "cause": ""}


# --------------------------------------------------------------------- listing
@pytest.mark.parametrize("prefix", [BASE, LEGACY])
def test_listing_returns_the_contracts_objects_in_id_order(client, mgr: TaskManager, prefix: str) -> None:
    ids = [mgr.submit("echo", i) for i in range(3)]
    mgr.submit("echo", "elsewhere", graph="other")
    for tid in ids:
        mgr.wait(tid, WAIT)
    resp = client.simulate_get(f"{prefix}/tasks")
    assert resp.status_code == 200
    assert list(resp.json) == ["tasks"]
    assert [t["id"] for t in resp.json["tasks"]] == ids
    assert resp.json["tasks"][0] == mgr.get(ids[0]).to_dict()


def test_status_is_matched_in_any_case(client, mgr: TaskManager) -> None:
    ok = mgr.submit("echo", 1)
    bad = mgr.submit("fail")
    mgr.wait(ok, WAIT)
    mgr.wait(bad, WAIT)
    for text in ("SUCCESS", "success", "Success"):
        assert [t["id"] for t in client.simulate_get(f"{BASE}/tasks", params={"status": text}).json["tasks"]] == [ok]
    assert [t["id"] for t in client.simulate_get(f"{BASE}/tasks?status=failed").json["tasks"]] == [bad]


def test_limit_defaults_to_100_and_minus_one_means_all(client, mgr: TaskManager) -> None:
    ids = mgr.submit_many("echo", range(120))
    mgr.wait(ids[-1], WAIT)
    assert len(client.simulate_get(f"{BASE}/tasks").json["tasks"]) == 100
    assert len(client.simulate_get(f"{BASE}/tasks?limit=-1").json["tasks"]) == 120
    assert len(client.simulate_get(f"{BASE}/tasks?limit=7").json["tasks"]) == 7


def test_limit_zero_is_an_empty_list(client, mgr: TaskManager) -> None:
    ids = mgr.submit_many("echo", range(3))
    mgr.wait(ids[-1], WAIT)
    assert client.simulate_get(f"{BASE}/tasks?limit=0").json == {"tasks": []}


def test_pages_carry_a_token_and_end_with_null(client, mgr: TaskManager) -> None:
    ids = mgr.submit_many("echo", range(5))
    mgr.wait(ids[-1], WAIT)
    seen, token = [], ""
    while token is not None:
        body = client.simulate_get(f"{BASE}/tasks", params={"limit": "2", "page": token}).json
        assert set(body) == {"tasks", "page"}
        seen += [t["id"] for t in body["tasks"]]
        token = body["page"]
    assert seen == ids
    assert client.simulate_get(f"{BASE}/tasks?page=&limit=-1").json["page"] is None


def test_ids_are_repeatable(client, mgr: TaskManager) -> None:
    ids = mgr.submit_many("echo", range(4))
    body = client.simulate_get(f"{BASE}/tasks?ids={ids[3]}&ids={ids[1]}").json
    assert [t["id"] for t in body["tasks"]] == [ids[1], ids[3]]
    assert [t["id"] for t in client.simulate_get(f"{BASE}/tasks?ids={ids[2]}").json["tasks"]] == [ids[2]]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=xyz", STATUS_TEXT),
        ("limit=-2", "limit must be -1 (no limit) or a non-negative integer, got '-2'"),
        ("limit=ten", "limit must be -1 (no limit) or a non-negative integer, got 'ten'"),
        ("limit=99999999999999999999999", "limit must be -1 (no limit) or a non-negative integer, got "
                                          "'99999999999999999999999'"),
        ("limit=1&limit=2", "parameter 'limit' was given 2 times; give it once"),
        ("ids=1&status=new", "ids cannot be combined with status or page: ask for the ids alone"),
        ("ids=1&page=", "ids cannot be combined with status or page: ask for the ids alone"),
        ("ids=x", "task id must be a positive integer, got 'x'"),
        ("page=notatoken", "invalid page token 'notatoken': pass the 'page' value of the previous answer, "
                           "or '' for the first page"),
    ],
)
def test_bad_list_parameters_are_400_with_a_clear_message(client, query: str, message: str) -> None:
    kind = "InvalidStatus" if query.startswith("status") else "InvalidArgument"
    _error(client.simulate_get(f"{BASE}/tasks?{query}"), 400, kind, message)


# ------------------------------------------------------------------- one task
def test_a_task_is_read_by_id_only_in_its_own_graph(client, mgr: TaskManager) -> None:
    tid = mgr.submit("echo", "x", graph="g1", graphspace="gs1")
    mgr.wait(tid, WAIT)
    resp = client.simulate_get(f"/graphspaces/gs1/graphs/g1/tasks/{tid}")
    assert resp.status_code == 200 and resp.json == mgr.get(tid).to_dict()
    for path in (f"/graphspaces/gs2/graphs/g1/tasks/{tid}", f"/graphspaces/gs1/graphs/g2/tasks/{tid}",
                 f"{LEGACY}/tasks/{tid}"):
        _error(client.simulate_get(path), 404, "TaskNotFound", f"Can't find task with id '{tid}'")


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "1.5", "99999999999999999999", "\u0661"])
def test_a_malformed_id_is_400(client, bad: str) -> None:
    _error(client.simulate_get(f"{BASE}/tasks/{bad}"), 400, "InvalidArgument",
           f"task id must be a positive integer, got {bad!r}")


# ------------------------------------------------------------------- deletion
def test_deleting_follows_the_contract(client, mgr: TaskManager, gates: Gates) -> None:
    done = mgr.submit("echo", 1)
    mgr.wait(done, WAIT)
    resp = client.simulate_delete(f"{BASE}/tasks/{done}")
    assert resp.status_code == 204 and resp.text == ""
    _error(client.simulate_delete(f"{BASE}/tasks/{done}"), 404, "TaskNotFound", f"Can't find task with id '{done}'")
    running = mgr.submit("gate")
    gates.wait_started(running)
    _error(client.simulate_delete(f"{BASE}/tasks/{running}"), 400, "IncompleteTask",
           f"Can't delete incomplete task '{running}' in status RUNNING, Please try to cancel the task first")
    _error(client.simulate_delete(f"{BASE}/tasks/{running}?force=maybe"), 400, "InvalidArgument",
           "parameter 'force' must be true or false, got 'maybe'")
    assert mgr.get(running).status is S.RUNNING
    assert client.simulate_delete(f"{LEGACY}/tasks/{running}?force=TRUE").status_code == 204
    gates.release.set()
    mgr.wait(mgr.submit("echo", 0), WAIT)
    _error(client.simulate_get(f"{BASE}/tasks/{running}"), 404, "TaskNotFound", f"Can't find task with id '{running}'")


# --------------------------------------------------------------------- actions
def test_cancel_answers_202_and_follows_the_contract(client, mgr: TaskManager, gates: Gates) -> None:
    tid = mgr.submit("sleepy")
    gates.wait_started(tid)
    resp = client.simulate_put(f"{BASE}/tasks/{tid}?action=cancel")
    assert resp.status_code == 202 and resp.json == {"cancelled": True}
    assert mgr.wait(tid, WAIT).status is S.CANCELLED
    _error(client.simulate_put(f"{LEGACY}/tasks/{tid}?action=cancel"), 400, "CannotCancel",
           f"Can't cancel task '{tid}' which is completed or cancelling")
    _error(client.simulate_put(f"{BASE}/tasks/9999?action=cancel"), 404, "TaskNotFound",
           "Can't find task with id '9999'")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "parameter 'action' is required: cancel, suspend or resume"),
        ("?action=explode", "parameter 'action' must be cancel, suspend or resume, got 'explode'"),
        ("?action=", "parameter 'action' must be cancel, suspend or resume, got ''"),
    ],
)
def test_a_missing_or_unknown_action_is_400(client, mgr: TaskManager, query: str, message: str) -> None:
    tid = mgr.submit("echo", 1)
    _error(client.simulate_put(f"{BASE}/tasks/{tid}{query}"), 400, "InvalidArgument", message)


def test_suspend_and_resume_are_extension_actions(client, mgr: TaskManager, gates: Gates) -> None:
    blockers = [mgr.submit("gate") for _ in range(2)]
    for b in blockers:
        gates.wait_started(b)
    tid = mgr.submit("echo", "held")
    resp = client.simulate_put(f"{BASE}/tasks/{tid}?action=suspend")
    assert resp.status_code == 202 and resp.json == {"suspended": True}
    assert mgr.get(tid).status is S.PENDING
    _error(client.simulate_put(f"{BASE}/tasks/{blockers[0]}?action=suspend"), 400, "InvalidTransition",
           f"Can't suspend task '{blockers[0]}' in status RUNNING: only a task that has not started (NEW, "
           "SCHEDULING, SCHEDULED, QUEUED, RESTORING) can be suspended; cancel a running one")
    gates.release.set()
    resp = client.simulate_put(f"{BASE}/tasks/{tid}?action=resume")
    assert resp.status_code == 202 and resp.json == {"resumed": True}
    assert mgr.wait(tid, WAIT).status is S.SUCCESS


def test_resuming_a_task_of_a_type_this_server_does_not_know_is_400_not_404(client, mgr: TaskManager,
                                                                           db_path: str) -> None:
    """404 says "no such task" in the contract; the task exists (a GET answers 200), only its
    type is not registered here (it answered 404; found by review)."""
    other = TaskManager(db_path)  # another process on the same file
    other.register("elsewhere", lambda ctx: 1)
    tid = other.submit("elsewhere", delay=3600)  # PENDING, from a process that knows the type
    other.shutdown()
    assert client.simulate_get(f"{BASE}/tasks/{tid}").status_code == 200
    resp = client.simulate_put(f"{BASE}/tasks/{tid}?action=resume")
    assert resp.status_code == 400 and resp.json["exception"] == "UnknownTaskType", resp.text
    assert "elsewhere" in resp.json["message"]


# ----------------------------------------------------------------------- jobs
@pytest.mark.parametrize("prefix", [BASE, LEGACY])
def test_a_registered_http_type_is_submitted_with_201(client, mgr: TaskManager, prefix: str) -> None:
    resp = client.simulate_post(f"{prefix}/jobs/job?name=first%20job", json={"gremlin": "g.V()"})
    assert resp.status_code == 201 and list(resp.json) == ["task_id"]
    task = mgr.wait(resp.json["task_id"], WAIT)
    assert task.name == "first job" and task.graph == "hugegraph" and task.graphspace == "DEFAULT"
    assert json.loads(task.result) == {"got": {"gremlin": "g.V()"}}


def test_an_empty_body_is_no_input(client, mgr: TaskManager) -> None:
    resp = client.simulate_post(f"{BASE}/jobs/job")
    assert resp.status_code == 201
    assert mgr.wait(resp.json["task_id"], WAIT).result == '{"got":null}'


@pytest.mark.parametrize("task_type", ["private", "nope", "echo"])
def test_only_types_registered_for_http_can_be_submitted(client, mgr: TaskManager, task_type: str) -> None:
    _error(client.simulate_post(f"{BASE}/jobs/{task_type}", json={}), 404, "UnknownTaskType",
           f"Task type {task_type!r} can't be submitted over HTTP: it is not registered, "
           "or not registered with http=True")
    assert mgr.list() == []


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b'{"a": NaN'])
def test_a_body_that_is_not_json_is_400_and_stores_nothing(client, mgr: TaskManager, body: bytes) -> None:
    resp = client.simulate_post(f"{BASE}/jobs/job", body=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json["exception"] == "InvalidArgument"
    assert resp.json["message"].startswith("the request body is not valid JSON")
    assert mgr.list() == []


def test_a_body_over_the_input_limit_is_413(db_path: str) -> None:
    m = TaskManager(db_path, max_input_size=64)
    m.register("job", lambda ctx: 0, http=True)
    c = testing.TestClient(create_app(m))
    json_type = {"Content-Type": "application/json"}
    _error(c.simulate_post(f"{BASE}/jobs/job", body=b'"' + b"x" * 100 + b'"', headers=json_type), 413,
           "LimitExceeded", "Task input size 102 exceeded limit 64 bytes")
    assert c.simulate_post(f"{BASE}/jobs/job", body=b'"short"', headers=json_type).status_code == 201
    m.shutdown()


# --------------------------------------------------------------- around tasks
def test_versions_is_what_hugegraph_clients_read(client) -> None:
    body = client.simulate_get("/versions").json
    assert body["versions"]["core"] == "1.7.0" and body["versions"]["version"] == "v1"
    from taskmgr import __version__

    assert body["versions"]["taskmgr"] == __version__


def test_the_openapi_document_is_served_and_names_every_route(client) -> None:
    doc = client.simulate_get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    expected = {
        f"{p}/{s}" for p in ("/graphspaces/{graphspace}/graphs/{graph}", "/graphs/{graph}")
        for s in ("tasks", "tasks/{task_id}", "jobs/{task_type}")
    } | {"/versions", "/openapi.json"}
    assert set(doc["paths"]) == expected
    assert set(doc["paths"]["/graphs/{graph}/tasks/{task_id}"]) == {"get", "delete", "put"}


def test_unknown_paths_and_methods_answer_the_error_object(client) -> None:
    _error(client.simulate_get("/nowhere"), 404, "NotFound", "no such path: /nowhere")
    resp = client.simulate_post(f"{BASE}/tasks")
    assert resp.status_code == 405 and resp.json["exception"] == "MethodNotAllowed"


def test_a_trailing_slash_is_the_same_path(client, mgr: TaskManager) -> None:
    assert client.simulate_get(f"{BASE}/tasks/").status_code == 200


def test_an_unexpected_error_is_a_logged_500_with_the_error_object(mgr: TaskManager, caplog) -> None:
    app = create_app(mgr)

    class Broken:
        def on_get(self, req, resp):
            raise RuntimeError("boom")

    app.add_route("/broken", Broken())
    with caplog.at_level(logging.ERROR, logger="taskmgr.rest"):
        resp = testing.TestClient(app).simulate_get("/broken")
    _error(resp, 500, "InternalError", "internal error: see the server log")
    assert "boom" in caplog.text


# ------------------------------------------------------------------------ auth
@pytest.fixture
def secured(mgr: TaskManager) -> Iterator[testing.TestClient]:
    mgr.register("job", lambda ctx: 1, http=True)
    yield testing.TestClient(create_app(mgr, auth=("admin", "s3cret:with colon")))


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    "headers",
    [{}, _basic("admin", "wrong"), _basic("other", "s3cret:with colon"), {"Authorization": "Basic !!!"},
     {"Authorization": "Bearer abc"}],
)
def test_without_valid_credentials_every_task_route_is_401_and_changes_nothing(
    secured, mgr: TaskManager, headers: dict[str, str], caplog
) -> None:
    tid = mgr.submit("echo", 1)
    mgr.wait(tid, WAIT)
    before = mgr.get(tid)
    with caplog.at_level(logging.INFO, logger="taskmgr.rest"):
        for call in (
            lambda: secured.simulate_get(f"{BASE}/tasks", headers=headers),
            lambda: secured.simulate_get(f"{BASE}/tasks/{tid}", headers=headers),
            lambda: secured.simulate_delete(f"{BASE}/tasks/{tid}", headers=headers),
            lambda: secured.simulate_put(f"{BASE}/tasks/{tid}?action=cancel", headers=headers),
            lambda: secured.simulate_post(f"{BASE}/jobs/job", json={}, headers=headers),
        ):
            resp = call()
            _error(resp, 401, "Unauthorized", "authentication required: send HTTP Basic credentials")
            assert resp.headers["www-authenticate"].startswith("Basic realm=")
    assert mgr.get(tid) == before and len(mgr.list()) == 1
    assert "s3cret" not in caplog.text and "Authorization" not in caplog.text


def test_with_valid_credentials_everything_works_and_versions_stays_public(secured, mgr: TaskManager) -> None:
    good = _basic("admin", "s3cret:with colon")
    resp = secured.simulate_post(f"{BASE}/jobs/job", json={}, headers=good)
    assert resp.status_code == 201
    assert secured.simulate_get(f"{BASE}/tasks/{resp.json['task_id']}", headers=good).status_code == 200
    assert secured.simulate_get("/versions").status_code == 200
    assert secured.simulate_get("/openapi.json").status_code == 200


def test_each_request_is_logged_on_one_line(client, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="taskmgr.rest"):
        client.simulate_get(f"{BASE}/tasks?limit=5")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "taskmgr.rest"]
    assert f"GET {BASE}/tasks?limit=5 200 OK" in line


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_long_lists_are_streamed_with_the_same_answer(client, mgr: TaskManager, monkeypatch, chunk: int) -> None:
    from taskmgr.rest import TasksResource

    ids = mgr.submit_many("echo", range(10))
    mgr.wait(ids[-1], WAIT)
    monkeypatch.setattr(TasksResource, "CHUNK", chunk)
    assert [t["id"] for t in client.simulate_get(f"{BASE}/tasks?limit=-1").json["tasks"]] == ids
    assert [t["id"] for t in client.simulate_get(f"{BASE}/tasks?limit=7").json["tasks"]] == ids[:7]
    body = client.simulate_get(f"{BASE}/tasks?limit=4&page=").json
    seen = [t["id"] for t in body["tasks"]]
    while body["page"] is not None:
        body = client.simulate_get(f"{BASE}/tasks", params={"limit": "4", "page": body["page"]}).json
        seen += [t["id"] for t in body["tasks"]]
    assert seen == ids
    whole = client.simulate_get(f"{BASE}/tasks?limit=-1&page=").json
    assert [t["id"] for t in whole["tasks"]] == ids and whole["page"] is None
    exact = client.simulate_get(f"{BASE}/tasks?limit=10&page=").json
    assert len(exact["tasks"]) == 10 and exact["page"] is None
    _error(client.simulate_get(f"{BASE}/tasks?limit=-1&status=bogus"), 400, "InvalidStatus",
           STATUS_TEXT.replace("'xyz'", "'bogus'"))


def test_a_store_that_cannot_be_written_is_503_and_a_stopped_manager_too(client, mgr: TaskManager, monkeypatch) -> None:
    from taskmgr import StoreError

    def refuse(*args, **kwargs):
        raise StoreError("the task database is full (database or disk is full): nothing was written; free disk "
                         "space (or raise SQLite's max_page_count) and retry")

    monkeypatch.setattr(rooms(mgr).store, "write", refuse)
    resp = client.simulate_post(f"{BASE}/jobs/job", json={"a": 1})
    assert resp.status_code == 503 and resp.json["exception"] == "StoreError"
    assert resp.json["message"].startswith("the task database is full")
    assert client.simulate_get(f"{BASE}/tasks").status_code == 200  # reads go on
    monkeypatch.undo()
    mgr.shutdown()
    resp = client.simulate_get(f"{BASE}/tasks")
    assert resp.status_code == 503 and resp.json["exception"] == "ManagerStateError"


# ------------------------------------------------- the edge (issue 16): strict parsing
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("bad", ["9" * 5000, "1" * 20])
def test_an_id_of_thousands_of_digits_is_400_not_python_s_digit_limit(client, bad: str) -> None:
    shown = repr(bad[:100]) + f"... ({len(bad)} characters)" if len(bad) > 100 else repr(bad)
    for resp in (client.simulate_get(f"{BASE}/tasks/{bad}"), client.simulate_delete(f"{BASE}/tasks/{bad}"),
                 client.simulate_put(f"{BASE}/tasks/{bad}?action=cancel"),
                 client.simulate_get(f"{BASE}/tasks", params={"ids": bad})):
        _error(resp, 400, "InvalidArgument", f"task id must be a positive integer, got {shown}")


@pytest.mark.parametrize("after", [2**63, 2**64 + 5, int("9" * 30)])
def test_a_page_token_naming_an_id_past_the_bound_is_400(client, after: int) -> None:
    token = base64.urlsafe_b64encode(f"taskmgr:{after}".encode()).decode().rstrip("=")
    resp = client.simulate_get(f"{BASE}/tasks", params={"page": token})
    assert resp.status_code == 400 and resp.json["exception"] == "InvalidArgument", resp.text
    assert resp.json["message"].startswith("invalid page token")


def test_paging_with_limit_0_is_refused_rather_than_answering_its_own_token(client, mgr: TaskManager) -> None:
    mgr.submit_many("echo", range(3))
    resp = client.simulate_get(f"{BASE}/tasks?page=&limit=0")
    assert resp.status_code == 400 and resp.json["exception"] == "InvalidArgument", resp.text
    assert "limit=0 with page" in resp.json["message"]
    assert client.simulate_get(f"{BASE}/tasks?limit=0").json == {"tasks": []}


@pytest.mark.parametrize("text", [" 1", "1 ", "+5", "1_0", "\u0661", "\uff11", "0x10", "1e2", "-0", "--1", "-01"])
def test_limit_takes_ascii_digits_only(client, text: str) -> None:
    _error(client.simulate_get(f"{BASE}/tasks", params={"limit": text}), 400, "InvalidArgument",
           f"limit must be -1 (no limit) or a non-negative integer, got {text!r}")


@pytest.mark.parametrize("text", [" success ", "success ", "UN\u212aNOWN", "succ\u0435ss"])
def test_status_takes_the_exact_names_in_any_ascii_case(client, text: str) -> None:
    _error(client.simulate_get(f"{BASE}/tasks", params={"status": text}), 400, "InvalidStatus",
           STATUS_TEXT.replace("'xyz'", repr(text)))


@pytest.mark.parametrize("inner", ["taskmgr: 5", "taskmgr:+5", "taskmgr:5 ", "taskmgr:05", "taskmgr:1_0",
                                   "taskmgr:\u0665", "taskmgr:-1"])
def test_page_tokens_are_exactly_those_the_server_writes(client, mgr: TaskManager, inner: str) -> None:
    mgr.submit_many("echo", range(8))
    token = base64.urlsafe_b64encode(inner.encode()).decode().rstrip("=")
    resp = client.simulate_get(f"{BASE}/tasks", params={"page": token, "limit": "2"})
    assert resp.status_code == 400 and resp.json["message"].startswith("invalid page token"), (inner, resp.text)


def test_force_takes_ascii_true_or_false_only(client, mgr: TaskManager) -> None:
    tid = mgr.submit("echo", 1)
    mgr.wait(tid, WAIT)
    resp = client.simulate_delete(f"{BASE}/tasks/{tid}", params={"force": "\uff54rue"})
    assert resp.status_code == 400 and resp.json["exception"] == "InvalidArgument"


def test_a_body_with_a_5000_digit_number_is_400_without_python_s_advice(client, mgr: TaskManager) -> None:
    resp = client.simulate_post(f"{BASE}/jobs/job", body=b'{"n": ' + b"7" * 5000 + b"}", headers=JSON)
    assert resp.status_code == 400 and resp.json["exception"] == "InvalidArgument", resp.text
    assert "set_int_max_str_digits" not in resp.text and "digits" in resp.json["message"]
    resp = client.simulate_post(f"{BASE}/jobs/job", body=b'{"n": NaN}', headers=JSON)
    assert resp.status_code == 400 and "NaN" in resp.json["message"]
    assert mgr.list() == []


# ----------------------------------------------------- the edge: HEAD and bodies
@pytest.mark.parametrize("path", [f"{BASE}/tasks", f"{LEGACY}/tasks?limit=-1", "/versions", "/openapi.json"])
def test_head_works_wherever_get_does(client, mgr: TaskManager, path: str) -> None:
    mgr.submit_many("echo", range(3))
    get, head = client.simulate_get(path), client.simulate_head(path)
    assert get.status_code == head.status_code == 200, head.text
    assert head.content == b"" and head.headers["content-type"].startswith("application/json")


def test_head_of_one_task_and_of_a_missing_one(client, mgr: TaskManager) -> None:
    tid = mgr.submit("echo", 1)
    assert client.simulate_head(f"{BASE}/tasks/{tid}").status_code == 200
    assert client.simulate_head(f"{BASE}/tasks/{tid + 100}").status_code == 404


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp"])
def test_a_body_must_be_sent_as_json_or_it_is_415(client, mgr: TaskManager, content_type) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = client.simulate_post(f"{BASE}/jobs/job", body=b'{"a": 1}', headers=headers)
    assert resp.status_code == 415 and resp.json["exception"] == "UnsupportedMediaType", resp.text
    assert mgr.list() == []


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "APPLICATION/JSON", "application/merge-patch+json"])
def test_json_content_types_are_accepted(client, mgr: TaskManager, content_type: str) -> None:
    resp = client.simulate_post(f"{BASE}/jobs/job", body=b'{"a": 1}', headers={"Content-Type": content_type})
    assert resp.status_code == 201, resp.text


# ------------------------------------------------------ the edge: cross-site
def test_a_cross_site_write_is_refused(client, mgr: TaskManager) -> None:
    for headers in ({"Origin": "http://evil.example", "Host": "127.0.0.1:8080"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}, {"Sec-Fetch-Site": "same-site"}):
        resp = client.simulate_post(f"{BASE}/jobs/job", body=b"{}", headers={**JSON, **headers})
        assert resp.status_code == 403 and resp.json["exception"] == "Forbidden", (headers, resp.text)
    assert mgr.list() == []
    same = {"Origin": "http://127.0.0.1:8080", "Host": "127.0.0.1:8080", "Sec-Fetch-Site": "same-origin"}
    assert client.simulate_post(f"{BASE}/jobs/job", body=b"{}", headers={**JSON, **same}).status_code == 201
    # a cross-site read cannot see the answer (no CORS), and is not refused
    assert client.simulate_get(f"{BASE}/tasks", headers={"Origin": "http://evil.example"}).status_code == 200


def test_only_the_allowed_host_names_are_answered(mgr: TaskManager) -> None:
    c = testing.TestClient(create_app(mgr, allowed_hosts={"localhost", "127.0.0.1", "::1"}))
    for host in ("localhost", "LOCALHOST:8080", "127.0.0.1:9", "[::1]:8080"):
        assert c.simulate_get(f"{BASE}/tasks", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example", "[::2]:80"):
        resp = c.simulate_get(f"{BASE}/tasks", headers={"Host": host})
        assert resp.status_code == 403 and resp.json["exception"] == "Forbidden", host


# ------------------------------------------------------ the edge: control characters
@pytest.mark.parametrize("char", ["\x00", "\x1b", "\n", "\x7f", "\x9b", "\x85"])
def test_control_characters_in_names_graphs_and_graphspaces_are_400(client, mgr: TaskManager, char: str) -> None:
    from urllib.parse import quote

    bad = quote(f"x{char}y")
    for path, field in ((f"/graphspaces/DEFAULT/graphs/{bad}/tasks", "graph"),
                        (f"/graphspaces/{bad}/graphs/g/tasks", "graphspace"),
                        (f"/graphs/{bad}/tasks/1", "graph")):
        resp = client.simulate_get(path)
        assert resp.status_code == 400 and resp.json["message"].startswith(f"{field} must not hold control"), path
    resp = client.simulate_post(f"{BASE}/jobs/job?name={bad}", body=b"{}", headers=JSON)
    assert resp.status_code == 400 and resp.json["message"].startswith("name must not hold control"), resp.text
    resp = client.simulate_post(f"/graphs/{bad}/jobs/job", body=b"{}", headers=JSON)
    assert resp.status_code == 400 and resp.json["message"].startswith("graph must not hold control")
    assert mgr.list() == []


def test_the_request_log_is_bounded_and_escapes_control_characters(client, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="taskmgr.rest"):
        client.simulate_get(f"{BASE}/tasks", query_string="status=" + "a" * 250_000)
        client.simulate_get("/graphs/x%0A2026-01-01 INFO forged line/tasks")
    lines = [r.getMessage() for r in caplog.records if r.name == "taskmgr.rest"]
    assert len(lines) == 2 and all(len(line) < 500 for line in lines), [len(x) for x in lines]
    assert "\n" not in lines[1] and "x\\x0a2026" in lines[1]


# ------------------------------------------------------ the edge: lists in bounded memory
def test_lists_read_the_store_a_few_tasks_at_a_time_whatever_the_limit(client, mgr: TaskManager) -> None:
    from taskmgr.rest import TasksResource

    ids = mgr.submit_many("echo", range(30))
    mgr.wait(ids[-1], WAIT)
    asked: list[int] = []
    real = mgr.list

    def spy(*args, **kwargs):
        asked.append(kwargs["limit"] if kwargs.get("ids") is None else len(kwargs["ids"]))
        return real(*args, **kwargs)

    mgr.list = spy
    try:
        for query in ("limit=-1", "limit=100", "limit=25&page=", "status=success&limit=-1",
                      "&".join(f"ids={i}" for i in ids)):
            asked.clear()
            body = client.simulate_get(f"{BASE}/tasks?{query}").json
            assert len(body["tasks"]) in (25, 30), query
            assert asked and max(asked) <= min(TasksResource.CHUNK, 16) and -1 not in asked, (query, asked)
    finally:
        del mgr.list


def test_a_task_object_is_the_same_json_as_to_dict(client, mgr: TaskManager) -> None:
    from taskmgr.rest import _task_bytes, _task_pieces

    odd = ["", "\x00\x1b\x7f\x9b", "\u2028\ud7ff\U0001f600", '"\\/', "x" * 300_000, "\u00e9" * 70_000]
    for i, text in enumerate(odd):
        tid = mgr.submit("echo", text, name=f"n{text[:10]}" if "\x00" not in text else f"n{i}")
        task = mgr.wait(tid, WAIT)
        assert json.loads(_task_bytes(task)) == task.to_dict()
        assert json.loads(b"".join(_task_pieces(task))) == task.to_dict()
        assert client.simulate_get(f"{BASE}/tasks/{tid}").json == task.to_dict()
