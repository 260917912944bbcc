"""Schemathesis against the shipped OpenAPI document: no 5xx, and every answer matches the document.

Bounded for CI: a fixed number of examples per operation (TASKMGR_FUZZ_EXAMPLES, default 40).
"""

from __future__ import annotations

import os
import zlib

import pytest

pytest.importorskip("falcon")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from conftest import register_test_types  # noqa: E402
from taskmgr import TaskManager  # noqa: E402
from taskmgr.rest import create_app  # noqa: E402

EXAMPLES = int(os.environ.get("TASKMGR_FUZZ_EXAMPLES", "40"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def _app():
    import tempfile

    from conftest import Gates

    tmp = tempfile.mkdtemp(prefix="taskmgr-fuzz-")
    mgr = TaskManager(os.path.join(tmp, "tasks.db"), poll_interval=0.05)
    register_test_types(mgr, Gates())
    mgr.register("job", lambda ctx: ctx.input, http=True)
    mgr.start()
    # something to find: tasks in several statuses, in the default graph and elsewhere
    ids = mgr.submit_many("echo", range(40))
    ids += [mgr.submit("fail"), mgr.submit("fail", graph="g1", graphspace="gs1")]
    held = mgr.submit("echo", "held", delay=3600)
    mgr.suspend(held)
    mgr.wait(ids[-1], 10)
    return create_app(mgr, log_requests=False), [*ids, held]


APP, KNOWN_IDS = _app()
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)


def _on_known_data(case):
    """The same case aimed at data that exists: the default graph, a stored task, an HTTP task type."""
    params = dict(case.path_parameters or {})
    if "graph" in params:
        params["graph"] = "hugegraph"
    if "graphspace" in params:
        params["graphspace"] = "DEFAULT"
    if "task_id" in params:
        params["task_id"] = KNOWN_IDS[zlib.crc32(repr((case.query, case.method)).encode()) % len(KNOWN_IDS)]
    if "task_type" in params:
        params["task_type"] = "job"
    case.path_parameters = params
    return case


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document_and_none_is_a_server_error(case) -> None:
    case.call_and_validate(checks=CHECKS)
    if case.path_parameters:
        _on_known_data(case).call_and_validate(checks=CHECKS)
