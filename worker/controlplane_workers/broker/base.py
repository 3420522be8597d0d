"""What the job core needs from a broker, whatever carries the messages.

Two implementations: `rabbitmq.RabbitMQBroker` (aio-pika) and `memory.MemoryBroker` (in process,
for `cpw dev` and unit tests). One contract test suite runs against both.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ..errors import BrokerUnavailable, DeadLettersBusy
from ..topology import Topology

Headers = dict[str, Any]
Offset = Literal["first", "next"] | int | datetime

# Header names carried on job messages and stream messages.
ATTEMPT = "x-cpw-attempt"
KIND = "x-cpw-kind"  # "job" on a job (and its copy on the results stream), "event" on an event
JOB_ID = "x-cpw-job-id"
REASON = "x-cpw-dead-letter-reason"
DETAIL = "x-cpw-dead-letter-detail"
FIRST_DEATH_QUEUE = "x-cpw-original-queue"
REDRIVE = "x-cpw-redrive"  # a dead-lettered job sent round again: readers start it afresh
# On a classic job queue: deliveries of this attempt that ended without a settle (the worker died or lost its
# channel), counted by the workers as a quorum queue counts them in `x-delivery-count` (see worker.py).
DELIVERY_COUNT = "x-cpw-delivery-count"
# On a quorum job queue: the broker's count of this message's earlier deliveries that went back to the queue.
BROKER_DELIVERY_COUNT = "x-delivery-count"

# What RabbitMQ adds to a dead-lettered message: the delay cascade and the retry queues dead-letter.
_DEATH_HEADERS = ("x-death", "x-first-death-queue", "x-first-death-reason", "x-first-death-exchange")


def without_deaths(headers: Headers) -> Headers:
    """`headers` without RabbitMQ's dead-letter history. A job parked in the delay cascade a second time
    with it would be dropped by the broker: it takes a queue named in x-death (and never rejected since)
    for a dead-letter cycle."""
    if not any(name in headers for name in _DEATH_HEADERS):
        return headers
    return {k: v for k, v in headers.items() if k not in _DEATH_HEADERS and not k.startswith("x-last-death-")}


def delay_ms(delay: float) -> int:
    """A delay in whole milliseconds, rounded up: a delayed job never starts early."""
    return max(0, math.ceil(delay * 1000))


@dataclass
class Delivery:
    """A job message handed to a consumer; settle it exactly once with ack or reject."""

    body: bytes
    headers: Headers
    message_id: str | None
    priority: int
    redelivered: bool
    routing_key: str
    _settle: Callable[[bool, bool], Awaitable[None]] = field(repr=False)
    settled: bool = False

    @property
    def attempt(self) -> int:
        try:
            return max(1, int(self.headers.get(ATTEMPT, 1)))
        except (TypeError, ValueError):
            return 1

    async def ack(self) -> None:
        if not self.settled:
            self.settled = True
            await self._settle(True, False)

    async def reject(self, requeue: bool) -> None:
        if not self.settled:
            self.settled = True
            await self._settle(False, requeue)


@dataclass
class StreamMessage:
    body: bytes
    headers: Headers
    offset: int
    timestamp: float | None = None


@dataclass
class QueueStats:
    ready: int
    unacked: int
    consumers: int
    dead_letters: int
    retrying: int
    delayed: int = 0  # delayed jobs not yet due (in the delay cascade)

    @property
    def depth(self) -> int:
        return self.ready + self.unacked


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop the deliveries. Returns within the broker's publish timeout even when the connection is gone
        (then at once: the subscription went with it) and never raises: whoever cancels is on its way out."""

    def release(self, offset: int) -> None:  # noqa: B027 - a no-op but for a stream follower with a window
        """A stream follower with a window: the reader is done with the messages up to `offset` (it wrote them
        somewhere), so as many more may come. Nothing for other subscriptions."""


JobHandler = Callable[[Delivery], Coroutine[Any, Any, None]]
StreamHandler = Callable[[Sequence[StreamMessage]], None]
HeartbeatHandler = Callable[[bytes], None]


class Broker(abc.ABC):
    """The broker operations of the job core. Every publish returns once the broker holds it."""

    def __init__(self, url: str, topology: Topology) -> None:
        self.url = url
        self.topology = topology
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.on_reconnect: list[Callable[[], Any]] = []
        # True once the dead-letter queue is known to carry its bound; False when an existing DLQ refused it.
        self.dlq_bounded: bool | None = None
        self._walking = asyncio.Lock()  # this process's walks of the dead letters, one at a time

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect and declare the topology."""

    @abc.abstractmethod
    async def close(self, timeout: float | None = None) -> None:
        """End the connection and every subscription made through it (none needs a cancel first). Returns
        within `timeout` seconds (default: the publish timeout) even when the broker answers no more, and
        never raises: a process's shutdown must not wait on a broker that is gone (a deleted vhost, a node
        down or cut off), and RabbitMQ requeues what was unacked once it sees the connection die."""

    @contextlib.asynccontextmanager
    async def connecting(self) -> AsyncIterator[None]:
        """Connect, then run the caller's first steps (follow a stream, consume). If the broker goes
        away during them, close before BrokerUnavailable propagates: the caller's next attempt then
        connects afresh instead of leaving a half-open connection reconnecting behind it."""
        await self.connect()
        try:
            yield
        except BrokerUnavailable:
            await self.close()
            raise

    @abc.abstractmethod
    async def publish_job(
        self, body: bytes, *, message_id: str, routing_key: str, priority: int, headers: Headers
    ) -> None:
        """Publish to the job exchange; raise UnroutableJob or BrokerUnavailable if not confirmed."""

    @abc.abstractmethod
    async def publish_retry(
        self, body: bytes, *, message_id: str, priority: int, headers: Headers, attempt: int, delay: float
    ) -> None:
        """Park a job in the delay queue of `attempt`; it returns to the job queue after `delay`."""

    @abc.abstractmethod
    async def publish_delayed(
        self, body: bytes, *, message_id: str, priority: int, headers: Headers, delay: float
    ) -> None:
        """Publish a job that reaches the job queue after `delay` seconds (at most MAX_CASCADE_DELAY)."""

    @abc.abstractmethod
    async def republish_job(self, body: bytes, *, message_id: str | None, priority: int, headers: Headers) -> None:
        """Put a copy of a delivered job at the tail of the job queue (straight, not through the exchange),
        confirmed; raise BrokerUnavailable if not. A worker's way to hand a job back (see worker.py)."""

    @abc.abstractmethod
    async def publish_dead_letter(self, body: bytes, *, message_id: str | None, headers: Headers) -> None: ...

    @abc.abstractmethod
    async def publish_events(self, bodies: Sequence[tuple[bytes, Headers]]) -> None:
        """Append events to the results stream, confirmed, in order."""

    @abc.abstractmethod
    async def publish_control(self, body: bytes, headers: Headers) -> None: ...

    @abc.abstractmethod
    async def publish_heartbeat(self, body: bytes) -> None:
        """Fire and forget: heartbeats are transient and not confirmed."""

    @abc.abstractmethod
    async def consume_jobs(self, handler: JobHandler, prefetch: int) -> Subscription: ...

    @abc.abstractmethod
    async def follow(
        self, stream: str, handler: StreamHandler, offset: Offset = "first", window: int | None = None
    ) -> Subscription:
        """Read a stream from `offset` on, in batches, and keep following it; resumes after reconnects.

        With a `window`, at most that many messages are handed over and not yet released
        (`Subscription.release`) at a time; the broker holds back the rest. Backpressure for a reader
        that writes what it reads somewhere that may be slow, and each message is handed over once,
        across reconnects too."""

    @abc.abstractmethod
    async def subscribe_heartbeats(self, handler: HeartbeatHandler) -> Subscription: ...

    @abc.abstractmethod
    async def queue_stats(self) -> QueueStats: ...

    @property
    def retries_held(self) -> int:
        """Retries this process holds until they are due (RabbitMQ: retries.py); `queue_stats` counts the others."""
        return 0

    @contextlib.asynccontextmanager
    async def dead_letters(self, wait: float = 10.0) -> AsyncIterator[DeadLetterWalk]:
        """Walk the dead-letter queue alone: no other walk, in this process or another, runs meanwhile.

        A queue cannot be read at an index, only from its head, and a message taken is hidden from
        every other reader until it is settled; two walks at once would each see holes where the
        other's messages are (a redrive answering "not found" for a letter that is there). Waits up
        to `wait` seconds for another walk to end, then raises DeadLettersBusy."""
        try:
            await asyncio.wait_for(self._walking.acquire(), wait)
        except TimeoutError:
            raise DeadLettersBusy("another walk of the dead letters did not end in time") from None
        try:
            walk = await self._walk_dead_letters(wait)
            try:
                yield walk
            finally:
                await walk.end()
        finally:
            self._walking.release()

    @abc.abstractmethod
    async def _walk_dead_letters(self, wait: float) -> DeadLetterWalk:
        """A walk, exclusive across processes (this process's walks are already serialised)."""


class DeadLetterWalk(abc.ABC):
    """The dead-letter queue read once from its head. A delivery taken is acked to remove it (after its
    job was published again, for a redrive) or left alone: `end` puts back every one not acked, in
    its place (RabbitMQ requeues a classic queue's messages where they were). Never reject one with
    requeue mid-walk: it would come back at the head and be taken again. A walk takes at most the
    `length` messages there were when it began, so dead letters arriving meanwhile (a redriven job
    failing again) wait for the next walk, and a walk always ends."""

    length: int
    taken: int = 0

    async def take(self) -> Delivery | None:
        """The next dead letter, or None at the end of the walk."""
        if self.taken >= self.length:
            return None
        delivery = await self._next()
        if delivery is not None:
            self.taken += 1
        return delivery

    @abc.abstractmethod
    async def _next(self) -> Delivery | None: ...

    @abc.abstractmethod
    async def end(self) -> None:
        """Put back what was taken and not acked; release the walk."""
