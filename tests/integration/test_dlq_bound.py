"""The dead-letter queue's bound on a real RabbitMQ: age, and a DLQ that a release without the bound made."""

from __future__ import annotations

import asyncio

import aio_pika

from controlplane_workers import metrics
from controlplane_workers.dlq import list_dead_letters
from tests.support import providers
from tests.support.harness import client, request, running_worker

NS, TYPE = "Test.Scripted", "things"


async def test_dead_letters_older_than_the_max_age_are_dropped(vhost_url):
    bound = {"dlq_max_age": 1}
    async with running_worker(vhost_url, providers.registry, **bound) as worker, client(vhost_url, **bound) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("old", "poison"))
        await queue.get_job_result(job_id, timeout=10)
        assert [letter["job_id"] for letter in await list_dead_letters(worker.broker)] == [job_id]
        await asyncio.sleep(1.5)
        assert await list_dead_letters(worker.broker) == []


async def test_an_unbounded_dlq_of_an_earlier_release_is_kept_and_reported(vhost_url):
    # RabbitMQ refuses to declare an existing queue with other arguments (PRECONDITION_FAILED): the
    # processes must start anyway, keep dead-lettering, and say that the bound is missing.
    connection = await aio_pika.connect(vhost_url)
    channel = await connection.channel()
    await channel.declare_queue("provider.jobs.dlq", durable=True)  # as releases before the bound did
    await connection.close()
    async with running_worker(vhost_url, providers.registry) as worker, client(vhost_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("kept", "poison"))
        await queue.get_job_result(job_id, timeout=10)
        letters = await list_dead_letters(worker.broker)
        bounded, gauge = worker.broker.dlq_bounded, metrics.DLQ_BOUNDED._value.get()
    assert [letter["job_id"] for letter in letters] == [job_id]
    assert bounded is False and gauge == 0
