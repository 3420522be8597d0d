"""/openapi.json describes every route, and schemathesis finds no 5xx and no schema violation."""

from __future__ import annotations

import asyncio

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.support import A, start_api, start_worker, write_tokens

pytestmark = pytest.mark.rabbitmq

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MIN_CASES = 500


@pytest.fixture
def processes(vhost_url, tmp_path):
    loop = asyncio.new_event_loop()
    try:
        api = loop.run_until_complete(
            start_api(
                vhost_url,
                tmp_path,
                CPW_API_MAX_WAIT=0.05,
                CPW_API_TENANT_MAX_QUEUED=100_000,
                # token-a an operator's: the dead-letter routes answer instead of the tenant's 404
                CPW_API_TOKENS_FILE=write_tokens(tmp_path, {"token-a": {"tenant": "tenant-a", "role": "operator"}}),
            )
        )
        worker = loop.run_until_complete(start_worker(vhost_url, tmp_path))
    finally:
        loop.close()
    yield api
    worker.stop()
    api.stop()


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_5xx_and_no_schema_violation(processes):
    api = processes
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    raw = schema.raw_schema
    assert raw["openapi"] == "3.1.0"
    assert {
        "/jobs",
        "/jobs/{id}",
        "/operations/{id}",
        "/operationResults/{id}",
        "/workers",
        "/stats",
        "/deadLetters",
        "/deadLetters/{id}/redrive",
    } <= set(raw["paths"])
    cases = 0
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 17
    for operation in operations:

        @hypothesis.settings(
            max_examples=60,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy())
        def run(case):  # noqa: ANN001
            nonlocal cases
            cases += 1
            try:
                case.call_and_validate(base_url=api.url, headers=A, checks=CHECKS, timeout=10)
            except Exception as exc:  # collect, to report every operation that fails
                failures.append(f"{operation.label}: {exc}"[:2000])
                raise

        try:
            run()
        except Exception:
            pass
    print(f"schemathesis: {cases} generated cases over {len(operations)} operations")
    assert not failures, "\n\n".join(failures[:5])
    assert cases >= MIN_CASES
    assert "Traceback" not in api.output()
