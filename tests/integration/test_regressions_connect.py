"""Regression: a worker starting while a restarted broker recovers its streams must retry, not exit.

Found by the full "everything at once" drill: declaring `provider.results` right after a broker
restart answered NOT_FOUND ("home node ... of durable queue ... is down or inaccessible"), which
escaped the connect backoff and the worker process exited 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiormq
import pytest

from controlplane_workers.broker.rabbitmq import RabbitMQBroker
from controlplane_workers.lifecycle import connect_with_backoff
from controlplane_workers.topology import Topology
from tests.support.harness import eventually


@pytest.mark.timeout(60)
async def test_stream_not_yet_recovered_is_retried(vhost_url, monkeypatch):
    broker = RabbitMQBroker(vhost_url, Topology())
    real_declare = RabbitMQBroker._declare
    calls = 0

    async def flaky_declare(self, channel):  # noqa: ANN001
        nonlocal calls
        calls += 1
        if calls == 1:
            raise aiormq.exceptions.ChannelNotFoundEntity(
                "NOT_FOUND - home node 'x@localhost' of durable queue 'provider.results' is down or inaccessible"
            )
        await real_declare(self, channel)

    monkeypatch.setattr(RabbitMQBroker, "_declare", flaky_declare)
    stop = asyncio.Event()
    assert await connect_with_backoff(broker.connect, "test", stop, cap=0.2)
    try:
        assert calls == 2 and broker.connected.is_set()
    finally:
        await broker.close()


@pytest.mark.timeout(60)
async def test_inequivalent_topology_is_not_retried(vhost_url):
    first = RabbitMQBroker(vhost_url, Topology())
    await first.connect()
    await first.close()
    other = RabbitMQBroker(vhost_url, Topology(queue_type="quorum"))  # the job queue exists as classic
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await other.connect()


@pytest.mark.timeout(60)
async def test_stream_messages_received_before_a_reconnect_are_not_dropped(vhost_url):
    # The follower counts a message in its resume offset when it receives it, and hands batches to
    # the handler on the next loop turn; a reconnect in between cleared the batch, so those events
    # were skipped for good by this reader (an API replica would never see those jobs end).
    from controlplane_workers.broker.base import StreamMessage

    broker = RabbitMQBroker(vhost_url, Topology())
    await broker.connect()
    seen: list[int] = []
    try:
        follower = await broker.follow(broker.topology.results_stream, lambda b: seen.extend(m.offset for m in b))
        follower.batch.append(StreamMessage(b"[]", {}, 41))  # received, not yet handed over
        follower.offset = 42
        await follower.resubscribe()
        assert seen == [41] and follower.batch == []
    finally:
        await broker.close()


@pytest.mark.timeout(60)
async def test_a_stream_reader_resumes_when_the_broker_closed_only_its_channel(vhost_url, rabbitmq):
    # A channel error (here an ack of an unknown delivery tag: PRECONDITION_FAILED) closes one
    # channel, not the connection. aio-pika reopens the channel, but the stream consumer was ours to
    # restore and only a connection reconnect did: the reader stopped for good, silently (an API
    # replica would have answered every later job as never ending).
    broker = RabbitMQBroker(vhost_url, Topology())
    await broker.connect()
    seen: list[bytes] = []
    try:
        follower = await broker.follow(broker.topology.results_stream, lambda b: seen.extend(m.body for m in b), "next")
        await broker.publish_events([(b'{"n": 1}', {})])
        await until(lambda: seen == [b'{"n": 1}'])
        assert follower.channel is not None
        underlay = await follower.channel.get_underlay_channel()
        with contextlib.suppress(Exception):
            await underlay.basic_ack(10**9)  # the broker closes this channel
        await until(lambda: underlay.is_closed)
        await broker.publish_events([(b'{"n": 2}', {})])
        await until(lambda: seen == [b'{"n": 1}', b'{"n": 2}'])
        # A lost connection reopens every channel: the reader resumes once, not once per path.
        if rabbitmq.server is not None:
            reconnects = broker.reconnects
            await asyncio.to_thread(rabbitmq.server.close_all_connections)
            await until(lambda: broker.reconnects > reconnects)
            await broker.publish_events([(b'{"n": 3}', {})])
            await until(lambda: len(seen) == 3)
            assert seen[-1] == b'{"n": 3}'
            reopened = await follower.channel.get_underlay_channel()
            assert len(reopened.consumers) == 1, reopened.consumers  # one consumer, not one per path
    finally:
        await broker.close()


async def until(predicate, timeout: float = 15.0) -> None:  # noqa: ANN001
    """Poll a condition the broker gives no event for."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.mark.timeout(150)
async def test_a_broker_whose_vhost_is_deleted_and_made_again_reconnects_every_time(rabbitmq):
    # Deleting a vhost cancels every consumer, then closes the connection. aio-pika 10.2 restores cancelled
    # consumers from its reconnect loop, and that restore could wait for the connection that same loop would make:
    # the broker never reconnected (broker/recovery.py, RobustChannel). A race: it took 1 try in 5 to 10 on a
    # loaded machine, so this tries six times; on a quiet one the old code mostly passes.
    waited: list[float | None] = []
    for _ in range(6):
        vhost = rabbitmq.new_vhost()
        broker = RabbitMQBroker(rabbitmq.url_for(vhost), Topology(queue_type="quorum", max_attempts=5))
        await broker.connect()

        async def nothing(_) -> None:  # noqa: ANN001
            return None

        try:
            await broker.consume_jobs(nothing, 4)
            await asyncio.to_thread(rabbitmq.delete_vhost, vhost)
            await eventually(lambda: not broker.connected.is_set(), timeout=10)  # noqa: B023
            await asyncio.to_thread(rabbitmq.new_vhost, vhost)
            started = time.monotonic()
            try:
                await asyncio.wait_for(broker.connected.wait(), 15)
                waited.append(round(time.monotonic() - started, 1))
            except TimeoutError:
                waited.append(None)
        finally:
            await broker.close(timeout=1)
            await asyncio.to_thread(rabbitmq.delete_vhost, vhost)
    print(f"reconnected after a vhost's deletion and return in {waited} s")
    assert None not in waited, waited
