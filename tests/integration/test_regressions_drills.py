"""Regressions found by the fault drills (tests/drills), each reduced to its smallest failing case."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from controlplane_workers import JobStatus
from tests.support.harness import client, eventually, request, running_worker
from tests.support.processes import CpwProcess, worker_env
from tests.support.rabbitmq import RabbitMQServer, own_node

NS, TYPE = "Test.Scripted", "things"


@pytest.fixture(scope="module")
def short_consumer_timeout() -> Iterator[RabbitMQServer]:
    """A node whose consumer timeout (2 s) is checked every 0.5 s instead of once a minute."""
    for server in own_node(consumer_timeout_ms=2000):
        server.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 500).")
        yield server


@pytest.mark.timeout(120)
async def test_job_longer_than_consumer_timeout_ends_once_and_worker_survives(short_consumer_timeout, tmp_path):
    """Drill `consumer timeout exceeded`: a 5 s job on a node with a 2 s consumer timeout never ended.

    The broker closed the consuming channel at 2 s; aio-pika cancelled the job with its channel;
    the worker requeued it, got it back, and the same happened again, forever (the job stayed
    Running, `redelivered` and `ack_lost` grew every 2 s). Now the job runs to its end, its outcome
    is published, and the redeliveries of that attempt are settled without running it again.
    """
    url = short_consumer_timeout.amqp_url
    worker = CpwProcess(
        "worker", worker_env(url, CPW_WORKER_ID="long", CPW_JOB_TIMEOUT="60"), tmp_path / "worker.log"
    ).start()
    try:
        await asyncio.to_thread(worker.wait_ready)
        async with client(url) as queue:
            long_job = await queue.submit_job(NS, TYPE, "create", request("long", "sleep:5"))
            short = [await queue.submit_job(NS, TYPE, "create", request(f"s{i}", "sleep:0.1")) for i in range(5)]
            result = await queue.get_job_result(long_job, timeout=40)
            assert result is not None, f"the long job never ended:\n{worker.tail()}"
            assert result.status is JobStatus.SUCCEEDED
            for job_id in short:
                assert (await queue.get_job_result(job_id, timeout=20)).status is JobStatus.SUCCEEDED
            # the broker did take the delivery back, and the worker settled it without a second run
            await eventually(lambda: worker.status()["redeliveries_settled"] >= 1, timeout=10)
            await eventually(lambda: worker.status()["in_flight"] == 0, timeout=10)
            status = worker.status()
            assert status["ready"] and worker.process.poll() is None
            assert status["jobs_succeeded"] == 6, status
            assert queue.index.duplicates == 0  # the long job ran once
    finally:
        worker.stop()


@pytest.mark.timeout(120)
async def test_ops_port_answers_through_the_sigterm_drain(vhost_url, tmp_path):
    """Drill `SIGTERM scale-in`: the ops port closed the moment SIGTERM arrived.

    uvicorn (>= 0.29) captures SIGTERM in `serve()` through `capture_signals()`, which ops.py did not
    turn off (it only replaced the older `install_signal_handlers`), so a draining worker answered
    /health/ready and /status with connection refused for its whole drain window.
    """
    import signal

    import httpx

    worker = CpwProcess(
        "worker", worker_env(vhost_url, CPW_WORKER_ID="drain", CPW_DRAIN_TIMEOUT="20"), tmp_path / "worker.log"
    ).start()
    try:
        await asyncio.to_thread(worker.wait_ready)
        async with client(vhost_url) as queue:
            # The job outlives the second of polling below by seconds: ten rounds of two requests to a loaded
            # process took up to 1.7 s after SIGTERM under CPU load, near the end of a 3 s job (then: refused).
            job_id = await queue.submit_job(NS, TYPE, "create", request("drain", "sleep:5"))
            await eventually(lambda: worker.status()["in_flight"] == 1)
            worker.signal(signal.SIGTERM)
            polled = time.monotonic() + 1.0
            async with httpx.AsyncClient(timeout=2) as http:
                while True:  # about a second of the five the job still runs
                    ready = await http.get(f"{worker.ops_url}/health/ready")
                    assert ready.status_code == 503
                    assert (await http.get(f"{worker.ops_url}/status")).json()["status"] == "draining"
                    if time.monotonic() > polled:
                        break
                    await asyncio.sleep(0.1)
            assert await asyncio.to_thread(worker.wait, 30) == 0
            assert (await queue.get_job_result(job_id, timeout=5)).status is JobStatus.SUCCEEDED
    finally:
        worker.stop()


@pytest.mark.timeout(60)
async def test_a_job_whose_dead_letter_the_broker_refuses_runs_again_until_it_is_accepted(rabbitmq, vhost_url):
    """Drill `everything at once` (CI, 2026-12-01): one accepted job never ended.

    Its last attempt could not publish its dead letter; the worker left the delivery unacked,
    expecting the broker to take it back with the channel, but the consuming channel lived on, so
    the job stayed Running for ever. Here the broker refuses the dead letter for real (a policy
    makes the DLQ full, with `overflow: reject-publish`, so the publish gets a basic.nack while every
    channel stays open). The job must go back to the queue and run again, and end Failed, dead
    lettered once, as soon as the DLQ takes messages again.
    """
    from controlplane_workers.dlq import list_dead_letters
    from tests.support.providers import CALLS, registry

    vhost = urllib.parse.unquote(urllib.parse.urlsplit(vhost_url).path.lstrip("/"))
    policy = f"/api/policies/{urllib.parse.quote(vhost, safe='')}/dlq-full"
    rabbitmq._request(
        "PUT",
        policy,
        {
            "pattern": r"^provider\.jobs\.dlq$",
            "definition": {"max-length": 0, "overflow": "reject-publish"},
            "apply-to": "queues",
            "priority": 10,
        },
    )
    runs = lambda: [c for c in CALLS if c["name"] == "refused"]  # noqa: E731
    refuse = {"dlq_overflow": "reject-publish"}  # the DLQ's own x-overflow wins over a policy's
    async with running_worker(vhost_url, registry, **refuse) as worker, client(vhost_url, **refuse) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("refused", "poison"))
        # refused once, handed back, run again: the delivery is not held on the live channel
        await eventually(lambda: len(runs()) >= 2 and worker.stats.ack_lost >= 2, timeout=20)
        assert queue.get_job_status(job_id).status is not JobStatus.FAILED
        rabbitmq._request("DELETE", policy)
        result = await queue.get_job_result(job_id, timeout=20)
        assert result is not None and result.status is JobStatus.FAILED, result
        assert [letter["job_id"] for letter in await list_dead_letters(worker.broker)] == [job_id]
        await eventually(lambda: worker.stats.dead_lettered == 1 and not worker.running, timeout=10)


@pytest.fixture(scope="module")
def stoppable_node() -> Iterator[RabbitMQServer]:
    """A node of this module's own: the test stops and starts it."""
    yield from own_node()


@pytest.mark.timeout(120)
async def test_a_worker_whose_node_stops_right_after_it_connected_waits_for_the_node(stoppable_node):
    """Drill `everything at once` (CI, 2026-12-01): a replacement worker exited with status 1.

    It connected just as the node began to stop; following the control stream then failed with
    aiormq's CONNECTION_FORCED (here: "Connection was not opened"), which was not BrokerUnavailable,
    so the start was not retried. Now that step says BrokerUnavailable, the half-open connection is
    closed, and the worker's start is retried until the node is back.
    """
    from controlplane_workers import ProviderWorker
    from controlplane_workers.errors import BrokerUnavailable
    from controlplane_workers.lifecycle import connect_with_backoff
    from controlplane_workers.providers import as_lookup
    from tests.support.harness import fast_settings
    from tests.support.providers import registry

    worker = ProviderWorker(fast_settings(stoppable_node.amqp_url), as_lookup(registry))
    connect = worker.broker.connect
    stops = 0

    async def connect_then_the_node_stops() -> None:  # the fault, at the one moment that matters
        nonlocal stops
        await connect()
        if stops == 0:
            stops += 1
            await asyncio.to_thread(stoppable_node.stop_app)

    worker.broker.connect = connect_then_the_node_stops  # type: ignore[method-assign]
    first = worker.broker
    with pytest.raises(BrokerUnavailable):
        await worker.start()
    assert first.connection is not None and first.connection.is_closed  # nothing left reconnecting

    stop = asyncio.Event()
    starting = asyncio.create_task(connect_with_backoff(worker.start, "worker", stop))
    await asyncio.to_thread(stoppable_node.start_app)
    try:
        assert await asyncio.wait_for(starting, 60)
        assert worker.ready
        async with client(stoppable_node.amqp_url) as queue:
            job_id = await queue.submit_job(NS, TYPE, "create", request("after"))
            assert (await queue.get_job_result(job_id, timeout=20)).status is JobStatus.SUCCEEDED
    finally:
        stop.set()
        await worker.stop(drain_timeout=1.0)


@pytest.mark.timeout(120)
async def test_an_api_whose_connections_are_closed_right_after_it_connected_still_becomes_ready(stoppable_node):
    """CI, 2026-12-05, drill `everything at once`: a restarted API exited with status 1.

    Its connect succeeded, then the drill closed every connection, and subscribing to the heartbeats (the
    fleet view) failed with CONNECTION_FORCED, which escaped the start. The subscription now says
    BrokerUnavailable and the start retries it while the robust connection comes back.
    """
    import aiormq

    from controlplane_api.serve import ApiProcess
    from controlplane_api.settings import load_api_settings

    process = ApiProcess(load_api_settings(rabbitmq_url=stoppable_node.amqp_url, worker_id="api-regression"))
    connect = process.queue.connect
    forced = 0

    async def connect_then_every_connection_is_closed() -> None:  # the fault, at the one moment that matters
        await connect()
        connection = process.queue.broker.connection
        assert connection is not None
        opening = connection.channel

        def channel(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the next channel open meets the close
            nonlocal forced
            if not forced:
                forced += 1
                raise aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED - test drill")
            return opening(*args, **kwargs)

        connection.channel = channel  # type: ignore[method-assign]

    process.queue.connect = connect_then_every_connection_is_closed  # type: ignore[method-assign]
    stop = asyncio.Event()
    try:
        assert await asyncio.wait_for(process.start(stop), 60)
        assert process.is_ready() and forced == 1
    finally:
        stop.set()
        await process.stop()
