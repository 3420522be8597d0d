"""Read-your-write on the results stream (CPW_RESULTS_READBACK, events.py).

RabbitMQ 3.10.8 confirmed stream writes it never appended when the stream's leader stopped gracefully
(the rolling-restart drill, docs/reliability.md). The embedded broker stands in for that broker here:
its node confirms chosen stream writes and drops them, so the worker's outcome or the submitter's
Accepted record is confirmed and yet never read by anyone, unless the writer reads it back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from controlplane_workers import JobStatus
from controlplane_workers.broker import memory
from controlplane_workers.broker.base import Headers
from controlplane_workers.settings import load_settings
from tests.support import providers
from tests.support.harness import client, eventually, request, running_worker

NS, TYPE = "Test.Scripted", "things"


@pytest.fixture
def url() -> Iterator[str]:
    memory.reset_nodes()
    yield f"memory://readback-{uuid.uuid4().hex[:8]}"
    memory.reset_nodes()


def lose_stream_writes(url: str, matches: Callable[[bytes], bool], times: int = 1) -> list[bytes]:
    """The node confirms the next `times` results-stream writes that `matches` and drops them."""
    node = memory._NODES.setdefault(url.rstrip("/"), memory._Node())  # noqa: SLF001  # the node every client shares
    dropped: list[bytes] = []
    append = node.append

    def lossy(stream: str, body: bytes, headers: Headers) -> None:
        if stream.endswith("results") and len(dropped) < times and matches(body):
            dropped.append(body)
            return
        append(stream, body, headers)

    node.append = lossy  # type: ignore[method-assign]
    return dropped


def test_readback_is_on_by_default_only_with_replicated_streams():
    assert load_settings(rabbitmq_url="memory://x").readback_seconds == 0.0
    assert load_settings(rabbitmq_url="memory://x", stream_replicas=1).readback_seconds == 0.0
    assert load_settings(rabbitmq_url="memory://x", stream_replicas=3).readback_seconds == 5.0
    assert load_settings(rabbitmq_url="memory://x", stream_replicas=3, results_readback=0).readback_seconds == 0.0
    assert load_settings(rabbitmq_url="memory://x", results_readback=0.5).readback_seconds == 0.5


@pytest.mark.parametrize("readback", [0.3, 0.0], ids=["readback", "no-readback"])
async def test_a_confirmed_outcome_the_stream_lost_is_published_again_before_the_ack(url, readback):
    dropped = lose_stream_writes(url, lambda body: b'"succeeded"' in body)
    async with (
        running_worker(url, providers.registry, results_readback=readback) as worker,
        client(url) as queue,
    ):
        job_id = await queue.submit_job(NS, TYPE, "create", request("a"))
        result = await queue.get_job_result(job_id, timeout=3)
        republished = worker.events.republished
    assert len(dropped) == 1
    if readback:
        assert result is not None and result.status is JobStatus.SUCCEEDED
        assert republished == 1 and worker.stats.succeeded == 1
    else:  # what the rolling restart did: acked, and no reader ever learns the outcome
        assert result is None and worker.stats.succeeded == 1


async def test_an_outcome_lost_again_and_again_is_published_until_it_is_read(url):
    dropped = lose_stream_writes(url, lambda body: b'"succeeded"' in body, times=3)
    async with (
        running_worker(url, providers.registry, results_readback=0.2) as worker,
        client(url) as queue,
    ):
        job_id = await queue.submit_job(NS, TYPE, "create", request("b"))
        result = await queue.get_job_result(job_id, timeout=5)
    assert len(dropped) == 3 and worker.events.republished == 3 and worker.events.read_twice == 0
    assert result is not None and result.status is JobStatus.SUCCEEDED
    assert worker.stats.succeeded == 1 and worker.stats.ack_lost == 0  # acked once read back, run once


async def test_a_later_batch_read_first_proves_the_earlier_one_lost_without_waiting(url):
    # The stream keeps one channel's order: reading the next outcome proves the first is not there, so
    # it is published again at once, long before the (here 30 s) timeout.
    dropped = lose_stream_writes(url, lambda body: b'"succeeded"' in body and b'"first"' in body)
    async with (
        running_worker(url, providers.registry, results_readback=30) as worker,
        client(url) as queue,
    ):
        first = await queue.submit_job(NS, TYPE, "create", request("first"))
        await eventually(lambda: dropped)
        second = await queue.submit_job(NS, TYPE, "create", request("second"))
        results = [await queue.get_job_result(j, timeout=5) for j in (first, second)]
    assert all(r is not None and r.status is JobStatus.SUCCEEDED for r in results)
    assert worker.events.republished == 1 and worker.events.readback.probes == 0


async def test_a_reader_that_reads_nothing_proves_nothing_and_the_job_goes_back(url):
    async with (
        running_worker(url, providers.registry, results_readback=0.1) as worker,
        client(url) as queue,
    ):
        await worker._results.cancel()  # noqa: SLF001  # the worker's reader stalls
        await queue.submit_job(NS, TYPE, "create", request("e"))
        await eventually(lambda: worker.stats.ack_lost >= 1, timeout=5)
        assert worker.events.republished == 0  # nothing published in vain
        assert worker.events.unread >= 1 and worker.stats.succeeded == 0


@pytest.mark.parametrize("readback", [0.3, 0.0], ids=["readback", "no-readback"])
async def test_a_confirmed_accepted_record_the_stream_lost_is_published_again(url, readback):
    dropped = lose_stream_writes(url, lambda body: b'"accepted"' in body)
    async with client(url, results_readback=readback) as submitter, client(url) as other_replica:
        job_id = await submitter.submit_job(NS, TYPE, "create", request("c"))
        await submitter.flush_records()
        seen = other_replica.get_job_status(job_id)
        republished = submitter.events.republished
    assert len(dropped) == 1
    if readback:
        assert seen is not None and seen.status is JobStatus.ACCEPTED and republished == 1
    else:  # no worker ran it: no other reader knows of the job
        assert seen is None


async def test_with_readback_on_nothing_is_published_twice_when_nothing_is_lost(broker_url):
    async with (
        running_worker(broker_url, providers.registry, results_readback=5) as worker,
        client(broker_url, results_readback=5) as queue,
    ):
        ids = [await queue.submit_job(NS, TYPE, "create", request(f"d{n}")) for n in range(20)]
        results = [await queue.get_job_result(job_id, timeout=10) for job_id in ids]
        await queue.flush_records()
    assert all(r is not None and r.status is JobStatus.SUCCEEDED for r in results)
    assert worker.events.republished == 0 and queue.events.republished == 0
    assert worker.stats.succeeded == 20 and queue.index.duplicates == 0
