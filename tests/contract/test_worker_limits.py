"""What a provider can make the worker publish: results within a cap (issue 16)."""

from __future__ import annotations

import orjson
import pytest

from controlplane_workers import JobStatus
from controlplane_workers.dlq import list_dead_letters
from tests.support import providers
from tests.support.harness import client, request, running_worker

NS, TYPE = "Test.Scripted", "things"
CAP = 1024


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    providers.CALLS.clear()
    providers.STARTED.clear()


def _calls(name: str) -> int:
    return sum(1 for c in providers.CALLS if c["name"] == name)


async def test_a_result_at_the_cap_succeeds_and_one_byte_over_fails_without_retry(broker_url):
    async with (
        running_worker(broker_url, providers.registry, max_result_bytes=CAP) as worker,
        client(broker_url) as queue,
    ):
        at_cap = await queue.submit_job(NS, TYPE, "create", request("at-cap", f"size:{CAP}"))
        over = await queue.submit_job(NS, TYPE, "create", request("over", f"size:{CAP + 1}"))
        fits = await queue.get_job_result(at_cap, timeout=10)
        too_large = await queue.get_job_result(over, timeout=10)
        letters = await list_dead_letters(worker.broker)
    assert fits.status is JobStatus.SUCCEEDED and len(orjson.dumps(fits.result)) == CAP
    assert too_large.status is JobStatus.FAILED and too_large.attempts == 1
    assert too_large.result is None and too_large.error.code == "ResultTooLarge"
    assert str(CAP + 1) in too_large.error.message and str(CAP) in too_large.error.message
    assert "xxxx" not in too_large.error.message  # the size, not the content
    assert _calls("over") == 1  # not retried
    assert letters == []  # an ordinary failed outcome, not a poison message
