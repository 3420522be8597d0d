"""The DLQ and the delay queues take the job queue's type (quorum beside quorum), and `cpw queues migrate`
moves the classic ones an earlier release made, keeping their messages (a real RabbitMQ, one node)."""

from __future__ import annotations

import asyncio
import time

import aio_pika

from controlplane_workers import JobStatus
from controlplane_workers.broker.base import ATTEMPT, JOB_ID, REASON
from controlplane_workers.broker.rabbitmq import RabbitMQBroker
from controlplane_workers.cli import main as cpw
from controlplane_workers.dlq import list_dead_letters
from controlplane_workers.migrate import migrate_side_queues
from controlplane_workers.models import Job
from controlplane_workers.topology import Topology
from tests.support import providers
from tests.support.harness import client, eventually, request, running_worker

NS, TYPE = "Test.Scripted", "things"
QUORUM = {"queue_type": "quorum", "max_attempts": 3}
SIDE = ["provider.jobs.dlq", "provider.jobs.retry.2", "provider.jobs.retry.3"]


async def test_beside_a_quorum_job_queue_the_dlq_and_delay_queues_are_quorum_and_work(rabbitmq):
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    try:
        async with running_worker(url, providers.registry, **QUORUM) as worker, client(url, **QUORUM) as queue:
            retried = await queue.submit_job(NS, TYPE, "create", request("r", "fail:1"))
            doomed = await queue.submit_job(NS, TYPE, "create", request("d", "error"))
            results = [await queue.get_job_result(j, timeout=20) for j in (retried, doomed)]
            letters = await list_dead_letters(worker.broker)
            legacy = worker.broker.legacy_side_queues
        assert results[0].status is JobStatus.SUCCEEDED and results[0].attempts == 2
        assert results[1].status is JobStatus.FAILED and [x["job_id"] for x in letters] == [doomed]
        assert legacy == []
        for name in SIDE:
            assert rabbitmq.queue(vhost, name)["type"] == "quorum", name
        retry = rabbitmq.queue(vhost, "provider.jobs.retry.2")["arguments"]
        assert retry["x-dead-letter-strategy"] == "at-least-once" and retry["x-overflow"] == "reject-publish"
    finally:
        rabbitmq.delete_vhost(vhost)


SLOW = {**QUORUM, "retry_base_delay": 3.0, "retry_max_delay": 3.0}


async def test_a_worker_holds_a_retry_until_due_then_moves_it_to_the_job_queue(rabbitmq):
    """The retry leaves its delay queue only once the job queue has it (broker/retries.py): a worker holds it
    unacked until due, so it is not ready in the queue meanwhile, and /stats counts it through the fleet."""
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    try:
        async with running_worker(url, providers.registry, **SLOW) as worker, client(url, **SLOW) as queue:
            submitted = time.time()
            job_id = await queue.submit_job(NS, TYPE, "create", request("h", "fail:1"))
            await eventually(lambda: worker.broker.retries_held == 1, timeout=10)
            ready = await _messages(url, "provider.jobs.retry.2")
            held = worker.status()["retries_held"]
            result = await queue.get_job_result(job_id, timeout=20)
            ran = time.time()
            mover = getattr(worker.broker, "retry_mover", None)
            moved = mover.moved if mover is not None else 0
        assert result is not None and result.status is JobStatus.SUCCEEDED and result.attempts == 2
        assert ready == 0 and held == 1 and moved == 1
        assert ran >= submitted + 3.0, "a retry never runs before its delay"
    finally:
        rabbitmq.delete_vhost(vhost)


async def test_a_retry_held_by_a_worker_that_stops_is_moved_by_the_next_one_when_due(rabbitmq):
    """At least once across workers: a worker that stops (or dies) hands the retries it holds back unacked,
    and the next one holds each until the same due time (its header), not a new delay."""
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    try:
        async with client(url, **SLOW) as queue:
            async with running_worker(url, providers.registry, **SLOW) as first:
                submitted = time.time()
                job_id = await queue.submit_job(NS, TYPE, "create", request("s", "fail:1"))
                await eventually(lambda: first.broker.retries_held == 1, timeout=10)
            back = await _messages(url, "provider.jobs.retry.2")  # handed back with the first's connection
            async with running_worker(url, providers.registry, **SLOW):
                result = await queue.get_job_result(job_id, timeout=20)
                ran = time.time()
        assert back == 1
        assert result is not None and result.status is JobStatus.SUCCEEDED and result.attempts == 2
        assert submitted + 3.0 <= ran < submitted + 3.0 + 5.0, ran - submitted
    finally:
        rabbitmq.delete_vhost(vhost)


async def _declared(url: str, name: str) -> tuple[int, int]:
    """Messages ready in a queue and its consumers, as the broker says at once (the management API lags by seconds)."""
    connection = await aio_pika.connect(url)
    try:
        result = (await (await connection.channel()).declare_queue(name, passive=True)).declaration_result
        return result.message_count or 0, result.consumer_count or 0
    finally:
        await connection.close()


async def _messages(url: str, name: str) -> int:
    return (await _declared(url, name))[0]


async def _an_earlier_release(url: str) -> Job:
    """Classic side queues as releases before this one declared them beside a quorum job queue, a dead
    letter in the DLQ and a job waiting a minute for its retry (returned)."""
    retry_job = Job.model_validate(
        {"provider_namespace": NS, "resource_type": TYPE, "operation": "create", "request": request("w")}
    )
    topology = Topology(queue_type="quorum", max_attempts=3)
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    for name in SIDE:
        await channel.declare_queue(name, durable=True, arguments=topology.side_queue_arguments(name, "classic"))
    letter = aio_pika.Message(b'{"id": "dead-1"}', message_id="dead-1", headers={REASON: "poison"})
    await channel.default_exchange.publish(letter, "provider.jobs.dlq")
    waiting = aio_pika.Message(
        retry_job.model_dump_json().encode(),
        message_id=retry_job.id,
        headers={JOB_ID: retry_job.id, ATTEMPT: 3},
        expiration=60,
    )
    await channel.default_exchange.publish(waiting, "provider.jobs.retry.3")
    await connection.close()
    return retry_job


async def test_classic_side_queues_of_an_earlier_release_are_kept_then_migrated_with_their_messages(rabbitmq):
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    try:
        job = await _an_earlier_release(url)
        # This release starts on them: it keeps them as they are, says so, and works.
        async with running_worker(url, providers.registry, **QUORUM) as worker, client(url, **QUORUM) as queue:
            assert worker.broker.legacy_side_queues == SIDE
            assert isinstance(worker.broker, RabbitMQBroker)
            fresh = await queue.submit_job(NS, TYPE, "create", request("f", "fail:1"))
            assert (await queue.get_job_result(fresh, timeout=20)).status is JobStatus.SUCCEEDED
            assert await _messages(url, "provider.jobs.retry.3") == 1  # still waiting
            # The migration, while the worker runs: the waiting retry goes to the job queue and runs now.
            said: list[str] = []
            migrated = await migrate_side_queues(worker.broker, said.append)
            result = await queue.get_job_result(job.id, timeout=20)
        assert migrated == SIDE, said
        assert result is not None and result.status is JobStatus.SUCCEEDED and result.attempts == 3
        for name in SIDE:
            assert rabbitmq.queue(vhost, name)["type"] == "quorum", name
        # The next process finds them as it declares them, and the dead letter kept.
        async with running_worker(url, providers.registry, **QUORUM) as worker:
            assert worker.broker.legacy_side_queues == []
            letters = await list_dead_letters(worker.broker)
        assert [x["job_id"] for x in letters] == ["dead-1"]
        assert any("1 dead letters kept" in line for line in said), said
    finally:
        rabbitmq.delete_vhost(vhost)


async def test_cpw_queues_migrate(rabbitmq, monkeypatch, capsys):
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    monkeypatch.setenv("CPW_QUEUE_TYPE", "quorum")
    monkeypatch.setenv("CPW_MAX_ATTEMPTS", "3")
    try:
        await _an_earlier_release(url)
        assert await asyncio.to_thread(cpw, ["queues", "migrate", "--url", url]) == 0
        out = capsys.readouterr().out
        assert "migrated: 3" in out and "1 waiting retries sent to provider.jobs" in out, out
        assert [rabbitmq.queue(vhost, name)["type"] for name in SIDE] == ["quorum"] * 3
        assert await _messages(url, "provider.jobs.dlq") == 1
        assert await _messages(url, "provider.jobs") == 1
        assert await asyncio.to_thread(cpw, ["queues", "migrate", "--url", url]) == 0  # again: nothing to do
        assert "migrated: 0" in capsys.readouterr().out
    finally:
        rabbitmq.delete_vhost(vhost)


async def test_a_delay_queue_deleted_under_the_workers_is_declared_again_and_its_retries_moved(rabbitmq):
    """A delay queue the retry mover consumes, deleted by hand: the first retry it refuses (unroutable) makes the
    worker declare it again and consume it afresh on a new channel (retries.py, `renew`), and the retry is
    published once more instead of its job going back to the queue. Concurrent refusals share one renewal.
    Before, the job went back, its retry landed in the queue once something declared it again, and no worker
    moved it: RabbitMQ 3.10 kept the deleted queue's consumer registered on the new one without serving it."""
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    try:
        async with running_worker(url, providers.registry, **QUORUM) as worker, client(url, **QUORUM) as queue:
            first = worker.broker.retry_mover
            rabbitmq._request("DELETE", f"/api/queues/{vhost}/provider.jobs.retry.2")  # noqa: SLF001
            jobs = await asyncio.gather(
                *(queue.submit_job(NS, TYPE, "create", request(f"m{i}", "fail:1")) for i in range(4))
            )
            results = [await queue.get_job_result(job_id, timeout=20) for job_id in jobs]
            mover = worker.broker.retry_mover
            renewals, moved, handed_back = mover.renewals, mover.moved, worker.stats.ack_lost
            _, consumers = await _declared(url, "provider.jobs.retry.2")
        assert [r.status if r else None for r in results] == [JobStatus.SUCCEEDED] * 4
        assert [r.attempts for r in results] == [2] * 4
        assert mover is first and renewals == 1 and moved == 4
        assert handed_back == 0, "each refused retry was published again, not handed back"
        assert consumers == 1
    finally:
        rabbitmq.delete_vhost(vhost)


async def test_a_retry_refused_by_an_earlier_releases_delay_queue_being_replaced_goes_back_to_the_queue(rabbitmq):
    """What a worker sees during `cpw queues migrate`: a classic delay queue of an earlier release (which the
    broker's TTL moves, no worker consumes) does not exist for a moment, its retry is unroutable, and the job goes
    back to the job queue rather than hang unsettled; once the queue is back the retry goes through it."""
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    try:
        await _an_earlier_release(url)
        async with running_worker(url, providers.registry, **QUORUM) as worker, client(url, **QUORUM) as queue:
            assert "provider.jobs.retry.2" in worker.broker.legacy_side_queues
            rabbitmq._request("DELETE", f"/api/queues/{vhost}/provider.jobs.retry.2")  # noqa: SLF001
            job_id = await queue.submit_job(NS, TYPE, "create", request("m", "fail:1"))
            await eventually(lambda: worker.stats.ack_lost >= 1, timeout=15)
            topology = Topology(queue_type="quorum", max_attempts=3)
            connection = await aio_pika.connect(url)
            channel = await connection.channel()
            args = topology.side_queue_arguments("provider.jobs.retry.2", "classic")
            await channel.declare_queue("provider.jobs.retry.2", durable=True, arguments=args)
            await connection.close()
            result = await queue.get_job_result(job_id, timeout=20)
            renewals = worker.broker.retry_mover.renewals
        assert result is not None and result.status is JobStatus.SUCCEEDED
        assert renewals == 0, "no worker consumes an earlier release's delay queue: nothing to renew"
    finally:
        rabbitmq.delete_vhost(vhost)
