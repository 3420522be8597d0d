"""Coalesced acks on a real RabbitMQ: fewer ack frames than jobs, and not one delivery left unacked
or acked early (a multiple ack past a running job would lose it if the worker then died)."""

from __future__ import annotations

import aio_pika
import pytest

from controlplane_workers import JobStatus
from controlplane_workers.topology import Topology
from tests.support import providers
from tests.support.harness import client, running_worker

NS, TYPE = "Test.Scripted", "things"
pytestmark = pytest.mark.rabbitmq


async def queue_depth(url: str) -> int:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(Topology().jobs_queue, passive=True)
        return queue.declaration_result.message_count or 0
    finally:
        await connection.close()


@pytest.mark.timeout(120)
async def test_bursts_are_acked_together_and_every_job_once(vhost_url):
    # 300 quick jobs finish in bursts, in order: their acks coalesce. Then a mix where slow jobs and
    # rejects break the runs: finished jobs past a running one are acked alone, at once.
    mixed = ["ok", "ok", "ok", "sleep:0.3", "ok", "permanent", "ok", "fail:1"]
    scripts = ["ok"] * 300 + [mixed[i % 8] for i in range(100)]
    async with client(vhost_url) as queue:
        ids = [
            await queue.submit_job(NS, TYPE, "create", {"resource_name": f"r{i}", "body": {"script": script}})
            for i, script in enumerate(scripts)
        ]
        async with running_worker(vhost_url, providers.registry, max_concurrent_jobs=32) as worker:
            results = [await queue.get_job_result(job_id, timeout=60) for job_id in ids]
            acks = worker.broker.job_acks
            assert acks is not None
            frames, acked = acks.frames, acks.acks
        # The worker has stopped and its channel is closed: anything it had not acked is back in the queue.
        assert await queue_depth(vhost_url) == 0
    assert all(r is not None for r in results)
    states = {r.status for r in results}
    assert states == {JobStatus.SUCCEEDED, JobStatus.FAILED}
    assert acked >= 400  # every job acked (the permanent failures too, after dead-lettering), retries too
    assert frames < acked * 0.6, (frames, acked)
