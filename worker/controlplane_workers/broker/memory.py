"""The embedded broker (`memory://`): RabbitMQ's semantics in one process, for `cpw dev` and tests.

Priorities, prefetch, ack / requeue, delayed retry, dead-lettering, streams and heartbeats behave as
on RabbitMQ with the project's topology. Clients of the same URL in one process share one node;
closing a client requeues what its consumers held, as a closed AMQP connection does.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..errors import BrokerUnavailable, DeadLettersBusy
from ..topology import Topology
from .base import (
    KIND,
    Broker,
    DeadLetterWalk,
    Delivery,
    Headers,
    HeartbeatHandler,
    JobHandler,
    Offset,
    QueueStats,
    StreamHandler,
    StreamMessage,
    Subscription,
    delay_ms,
)

STREAM_LIMIT = 1_000_000


@dataclass
class _Message:
    body: bytes
    headers: Headers
    message_id: str | None
    priority: int
    routing_key: str
    redelivered: bool = False

    def delivery(self, settle: Callable[[bool, bool], Awaitable[None]]) -> Delivery:
        """This message handed to a consumer, settled through `settle`."""
        return Delivery(
            self.body, dict(self.headers), self.message_id, self.priority, self.redelivered, self.routing_key, settle
        )


@dataclass
class _Consumer(Subscription):
    node: _Node
    handler: JobHandler
    prefetch: int
    owner: MemoryBroker
    unacked: set[int] = field(default_factory=set)
    active: bool = True

    async def cancel(self) -> None:
        self.active = False
        if self in self.node.consumers:
            self.node.consumers.remove(self)


@dataclass
class _Follower(Subscription):
    node: _Node
    stream: str
    handler: StreamHandler
    position: int
    owner: MemoryBroker
    window: int | None = None
    released: int = -1  # with a window: the last offset the reader released
    active: bool = True

    async def cancel(self) -> None:
        self.active = False

    def release(self, offset: int) -> None:
        if self.window is not None and offset > self.released:
            self.released = offset
            self.node.wake()


@dataclass
class _HeartbeatSubscriber(Subscription):
    handler: HeartbeatHandler
    active: bool = True

    async def cancel(self) -> None:
        self.active = False


class _DeadLetterWalk(DeadLetterWalk):
    def __init__(self, node: _Node) -> None:
        self.node = node
        self.length = len(node.dead_letters)
        self.held: list[_Message] = []  # taken and not acked, in queue order

    async def _next(self) -> Delivery | None:
        if not self.node.dead_letters:
            return None
        message = self.node.dead_letters.popleft()
        self.held.append(message)

        async def settle(ack: bool, requeue: bool) -> None:
            if ack or not requeue:
                self.held = [m for m in self.held if m is not message]

        return message.delivery(settle)

    async def end(self) -> None:
        self.node.dead_letters.extendleft(reversed(self.held))  # back in their places, as RabbitMQ does
        self.held = []
        self.node.walking.release()


class _Node:
    """The shared state behind every client of one `memory://` URL."""

    def __init__(self) -> None:
        self.ready: list[tuple[int, int, _Message]] = []
        self.seq = itertools.count()
        self.in_flight: dict[int, tuple[_Message, _Consumer]] = {}
        self.delivery_tags = itertools.count(1)
        self.consumers: list[_Consumer] = []
        self.next_consumer = 0
        self.dead_letters: deque[_Message] = deque()
        self.walking = asyncio.Lock()
        self.retrying: set[asyncio.TimerHandle] = set()
        self.delayed: set[asyncio.TimerHandle] = set()  # delayed jobs not yet due
        self.streams: dict[str, list[StreamMessage]] = {}
        self.stream_base: dict[str, int] = {}
        self.followers: list[_Follower] = []
        self.heartbeat_subscribers: list[_HeartbeatSubscriber] = []
        self.notify_scheduled = False

    # -- job queue
    def enqueue(self, message: _Message) -> None:
        heapq.heappush(self.ready, (-message.priority, next(self.seq), message))
        self.dispatch()

    def dispatch(self) -> None:
        while self.ready:
            consumer = self._consumer_with_room()
            if consumer is None:
                return
            _, _, message = heapq.heappop(self.ready)
            tag = next(self.delivery_tags)
            consumer.unacked.add(tag)
            self.in_flight[tag] = (message, consumer)
            delivery = message.delivery(self._settler(tag))
            asyncio.get_running_loop().create_task(consumer.handler(delivery))

    def _consumer_with_room(self) -> _Consumer | None:
        count = len(self.consumers)
        for i in range(count):  # round robin, as RabbitMQ spreads deliveries over consumers
            consumer = self.consumers[(self.next_consumer + i) % count]
            if consumer.active and len(consumer.unacked) < consumer.prefetch:
                self.next_consumer = (self.next_consumer + i + 1) % count
                return consumer
        return None

    def _settler(self, tag: int):  # noqa: ANN202 - a closure per delivery
        async def settle(ack: bool, requeue: bool) -> None:
            self.settle(tag, ack, requeue)

        return settle

    def settle(self, tag: int, ack: bool, requeue: bool) -> None:
        entry = self.in_flight.pop(tag, None)
        if entry is None:
            raise BrokerUnavailable("delivery tag is no longer valid (its consumer was closed)")
        message, consumer = entry
        consumer.unacked.discard(tag)
        if not ack:
            if requeue:
                message.redelivered = True
                heapq.heappush(self.ready, (-message.priority, next(self.seq), message))
            else:
                self.dead_letters.append(message)
        self.dispatch()

    def drop_consumer(self, consumer: _Consumer) -> None:
        consumer.active = False
        if consumer in self.consumers:
            self.consumers.remove(consumer)
        for tag in list(consumer.unacked):
            self.settle(tag, ack=False, requeue=True)

    def park(self, message: _Message, delay: float, timers: set[asyncio.TimerHandle]) -> None:
        """Hold a message for `delay` seconds, then queue it (a retry's or a delayed job's wait). A timer,
        not a queue: `memory://` lives and dies with its process, as these timers do."""

        def release() -> None:
            timers.discard(handle)
            self.enqueue(message)

        handle = asyncio.get_running_loop().call_later(max(delay, 0.0), release)
        timers.add(handle)

    # -- streams
    def append(self, stream: str, body: bytes, headers: Headers) -> None:
        messages = self.streams.setdefault(stream, [])
        base = self.stream_base.setdefault(stream, 0)
        messages.append(StreamMessage(body, headers, base + len(messages), time.time()))
        if len(messages) > STREAM_LIMIT:
            drop = len(messages) - STREAM_LIMIT
            del messages[:drop]
            self.stream_base[stream] = base + drop
        self.wake()

    def wake(self) -> None:
        """Hand the followers what they may take, on the next loop turn."""
        if not self.notify_scheduled:
            self.notify_scheduled = True
            asyncio.get_running_loop().call_soon(self.notify)

    def notify(self) -> None:
        self.notify_scheduled = False
        for follower in list(self.followers):
            if not follower.active:
                self.followers.remove(follower)
                continue
            messages = self.streams.get(follower.stream, [])
            base = self.stream_base.get(follower.stream, 0)
            start = max(follower.position - base, 0)
            end = len(messages)
            if follower.window is not None:  # at most a window past what the reader released
                end = min(end, max(follower.released + 1, base) + follower.window - base)
            if start < end:
                batch = messages[start:end]
                follower.position = base + end
                follower.handler(batch)

    def start_position(self, stream: str, offset: Offset) -> int:
        messages = self.streams.get(stream, [])
        base = self.stream_base.get(stream, 0)
        if offset == "first":
            return base
        if offset == "next":
            return base + len(messages)
        if isinstance(offset, datetime):
            cutoff = offset.timestamp()
            for message in messages:
                if (message.timestamp or 0) >= cutoff:
                    return message.offset
            return base + len(messages)
        return max(int(offset), base)


_NODES: dict[str, _Node] = {}


def reset_nodes() -> None:
    """Forget every embedded broker (tests start from an empty broker)."""
    _NODES.clear()


class MemoryBroker(Broker):
    def __init__(self, url: str, topology: Topology, **_: object) -> None:
        super().__init__(url, topology)
        self.node = _NODES.setdefault(url.rstrip("/"), _Node())
        self.subscriptions: list[Subscription] = []

    async def connect(self) -> None:
        self.dlq_bounded = True  # by length only: memory:// keeps no message ages
        self.connected.set()

    async def close(self, timeout: float | None = None) -> None:
        """Never waits (nothing here can stop answering): `timeout` is the contract's, for parity."""
        self.connected.clear()
        for subscription in self.subscriptions:
            if isinstance(subscription, _Consumer):
                self.node.drop_consumer(subscription)
            else:
                await subscription.cancel()
        self.subscriptions.clear()

    def _check(self) -> None:
        if not self.connected.is_set():
            raise BrokerUnavailable("embedded broker client is closed")

    async def publish_job(
        self, body: bytes, *, message_id: str, routing_key: str, priority: int, headers: Headers
    ) -> None:
        self._check()
        headers = {KIND: "job", **headers}
        self.node.enqueue(_Message(body, headers, message_id, priority, routing_key))

    async def publish_retry(
        self, body: bytes, *, message_id: str, priority: int, headers: Headers, attempt: int, delay: float
    ) -> None:
        self._check()
        self.node.park(
            _Message(body, dict(headers), message_id, priority, self.topology.jobs_queue), delay, self.node.retrying
        )

    async def publish_delayed(
        self, body: bytes, *, message_id: str, priority: int, headers: Headers, delay: float
    ) -> None:
        self._check()
        # the cascade's rounding (up to whole ms), so both brokers start a job at the same earliest time
        message = _Message(body, {KIND: "job", **headers}, message_id, priority, self.topology.jobs_queue)
        self.node.park(message, delay_ms(delay) / 1000, self.node.delayed)

    async def republish_job(self, body: bytes, *, message_id: str | None, priority: int, headers: Headers) -> None:
        self._check()
        self.node.enqueue(_Message(body, dict(headers), message_id, priority, self.topology.jobs_queue))

    async def publish_dead_letter(self, body: bytes, *, message_id: str | None, headers: Headers) -> None:
        self._check()
        t = self.topology
        if len(self.node.dead_letters) >= t.dlq_max_length:  # the bound of RabbitMQ's x-max-length/x-overflow
            if t.dlq_overflow == "reject-publish":
                raise BrokerUnavailable("the dead-letter queue is full (reject-publish)")
            while len(self.node.dead_letters) >= t.dlq_max_length:
                self.node.dead_letters.popleft()
        self.node.dead_letters.append(_Message(body, dict(headers), message_id, 0, t.dead_letter_queue))

    async def publish_events(self, bodies: Sequence[tuple[bytes, Headers]]) -> None:
        self._check()
        for body, headers in bodies:
            self.node.append(self.topology.results_stream, body, headers)

    async def publish_control(self, body: bytes, headers: Headers) -> None:
        self._check()
        self.node.append(self.topology.control_stream, body, headers)

    async def publish_heartbeat(self, body: bytes) -> None:
        for subscriber in list(self.node.heartbeat_subscribers):
            if subscriber.active:
                subscriber.handler(body)

    async def consume_jobs(self, handler: JobHandler, prefetch: int) -> Subscription:
        self._check()
        consumer = _Consumer(self.node, handler, prefetch, self)
        self.node.consumers.append(consumer)
        self.subscriptions.append(consumer)
        self.node.dispatch()
        return consumer

    async def follow(
        self, stream: str, handler: StreamHandler, offset: Offset = "first", window: int | None = None
    ) -> Subscription:
        self._check()
        position = self.node.start_position(stream, offset)
        follower = _Follower(self.node, stream, handler, position, self, window, position - 1)
        self.node.followers.append(follower)
        self.subscriptions.append(follower)
        self.node.notify()
        return follower

    async def subscribe_heartbeats(self, handler: HeartbeatHandler) -> Subscription:
        subscriber = _HeartbeatSubscriber(handler)
        self.node.heartbeat_subscribers.append(subscriber)
        self.subscriptions.append(subscriber)
        return subscriber

    async def queue_stats(self) -> QueueStats:
        node = self.node
        return QueueStats(
            ready=len(node.ready),
            unacked=len(node.in_flight),
            consumers=sum(1 for c in node.consumers if c.active),
            dead_letters=len(node.dead_letters),
            retrying=len(node.retrying),
            delayed=len(node.delayed),
        )

    async def _walk_dead_letters(self, wait: float) -> DeadLetterWalk:
        self._check()
        try:
            await asyncio.wait_for(self.node.walking.acquire(), wait)  # every client of this node
        except TimeoutError:
            raise DeadLettersBusy("another walk of the dead letters did not end in time") from None
        return _DeadLetterWalk(self.node)
