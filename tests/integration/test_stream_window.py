"""A stream follower with a window (`Broker.follow(..., window=)`): the reader holds at most that many messages it
has not released, each handed over once, on the embedded broker and on RabbitMQ (whose credit counts messages but
sends a stream's chunk whole), across a reconnect too. The projector's backpressure (tests/postgres/test_backlog.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import pytest

from controlplane_workers.broker import open_broker
from controlplane_workers.broker.base import Broker, StreamMessage, Subscription
from controlplane_workers.broker.rabbitmq import RabbitMQBroker
from controlplane_workers.topology import Topology
from tests.integration.test_regressions_connect import until

WINDOW = 5


class Reader:
    """Records what it was handed and how much it held at each hand-over; releases on demand."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.released = -1
        self.most = 0
        self.subscription: Subscription | None = None

    def __call__(self, batch: Sequence[StreamMessage]) -> None:
        self.seen.extend(m.offset for m in batch)
        self.most = max(self.most, len(self.seen) - (self.released + 1))

    def release(self, offset: int) -> None:
        assert self.subscription is not None
        self.released = offset
        self.subscription.release(offset)


async def follow(broker: Broker) -> Reader:
    reader = Reader()
    reader.subscription = await broker.follow(broker.topology.results_stream, reader, "first", window=WINDOW)
    return reader


@pytest.mark.timeout(60)
async def test_a_follower_holds_at_most_its_window_and_gets_every_message_once(broker_url):
    broker = open_broker(broker_url, Topology())
    await broker.connect()
    try:
        reader = await follow(broker)
        await broker.publish_events([(b"[]", {}) for _ in range(40)])  # one chunk on RabbitMQ: over the window
        await until(lambda: len(reader.seen) >= WINDOW)
        await asyncio.sleep(0.3)  # an observation window: nothing more may come before a release
        assert reader.seen == list(range(WINDOW)), "at the window, and no further"
        while len(reader.seen) < 40:  # release the oldest two at a time, as a slow writer would
            reader.release(min(reader.released + 2, reader.seen[-1]))
            await until(lambda: len(reader.seen) > reader.released + 1 or len(reader.seen) == 40)
        reader.release(39)
        assert reader.seen == list(range(40)) and reader.most == WINDOW
    finally:
        await broker.close()


@pytest.mark.timeout(60)
async def test_a_reconnect_while_the_reader_holds_its_window_hands_nothing_over_twice(vhost_url):
    broker = RabbitMQBroker(vhost_url, Topology())
    await broker.connect()
    try:
        reader = await follow(broker)
        await broker.publish_events([(b"[]", {}) for _ in range(12)])
        await until(lambda: len(reader.seen) == WINDOW)
        follower = reader.subscription
        assert follower is not None and follower.channel is not None  # type: ignore[attr-defined]
        underlay = await follower.channel.get_underlay_channel()  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            await underlay.basic_ack(10**9)  # the broker closes this channel; aio-pika reopens it
        await until(lambda: underlay.is_closed)
        await until(lambda: follower._resume is not None and follower._resume.done())  # type: ignore[attr-defined]  # noqa: SLF001
        await asyncio.sleep(0.3)  # an observation window: the new channel's credit must not add to what it holds
        assert reader.seen == list(range(WINDOW))
        reader.release(WINDOW - 1)
        await until(lambda: len(reader.seen) == 2 * WINDOW)
        reader.release(2 * WINDOW - 1)
        await until(lambda: len(reader.seen) == 12)
        assert reader.seen == list(range(12)) and reader.most == WINDOW
    finally:
        await broker.close()
