"""A stream follower cancelled right after it was handed a batch: its ack of that batch must not reach the broker
after the channel's close, where RabbitMQ ends the whole connection ("CHANNEL_ERROR - expected 'channel.open'").
A worker's start-up scan of the control stream does exactly this; the connection it lost took the job it had just
received with it (a redelivery, counted as a lost delivery)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from controlplane_workers.broker.base import StreamMessage
from controlplane_workers.broker.rabbitmq import RabbitMQBroker
from controlplane_workers.topology import Topology

ROUNDS = 40


@pytest.mark.timeout(90)
async def test_followers_cancelled_as_soon_as_they_read_leave_the_connection_alone(vhost_url):
    broker = RabbitMQBroker(vhost_url, Topology())
    await broker.connect()
    try:
        await broker.publish_events([(b"[]", {}) for _ in range(20)])
        for _ in range(ROUNDS):
            handed = asyncio.Event()

            def reader(batch: Sequence[StreamMessage], handed: asyncio.Event = handed) -> None:
                handed.set()

            subscription = await broker.follow(broker.topology.results_stream, reader, "first")
            await asyncio.wait_for(handed.wait(), 10)
            await subscription.cancel()
        await broker.publish_events([(b"[]", {})])  # a confirmed publish: the connection answers
        assert broker.connected.is_set()
        assert broker.reconnects == 0 and broker.outage.since is None, "the connection was lost"
    finally:
        await broker.close()
