"""RabbitMQ through aio-pika: robust connection, publisher confirms, streams for events.

One connection per process, a confirmed channel for publishing, one channel for consuming jobs
(prefetch = concurrency) and one per followed stream. Stream consumers resume from the last offset
they saw after a reconnect, so a broker restart neither loses nor replays the whole stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import DeliveryError

from ..errors import BrokerUnavailable, DeadLettersBusy, UnroutableJob
from ..redact import redact_text, redact_url
from ..topology import DELAY_LEVELS, Topology
from .acks import AckCoalescer
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
    without_deaths,
)
from .recovery import Backoff, Outage, RobustConnection, cause_of, quiet_library_loops
from .retries import RetryMover, due_header

log = logging.getLogger(__name__)

PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)
JSON = "application/json"
DEFAULT_EXCHANGE = ""  # AMQP's default exchange: the routing key is the queue (or stream) name
Properties = aiormq.spec.Basic.Properties
STREAM_PREFETCH = 2000
STREAM_ACK_EVERY = 500

_UNAVAILABLE = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.ChannelInvalidStateError,
    ConnectionError,
    asyncio.TimeoutError,
    RuntimeError,
)


# RabbitMQ refuses to consume from a stream whose member on the node has not started yet, with a
# PRECONDITION_FAILED: a passing state right after another process declared the stream (two workers
# starting together on a fresh vhost, CI 2026-12-01), not a topology that disagrees with ours.
_STREAM_MEMBER_STARTING = "does not have a replica on the local node"


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """The broker went away (or its node stopped) mid-call: BrokerUnavailable, which callers retry.

    A worker that connected just as the node shut down failed in its next step (following the
    control stream) with aiormq's CONNECTION_FORCED and exited instead of waiting for the node.
    """
    try:
        yield
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        if _STREAM_MEMBER_STARTING not in str(exc):
            raise  # the topology on the broker disagrees with our settings: retrying cannot help
        raise BrokerUnavailable(f"{what}: {redact_text(str(exc))}") from exc
    except _UNAVAILABLE as exc:
        raise BrokerUnavailable(f"{what}: {redact_text(repr(exc))}") from exc


def _delivery(message: AbstractIncomingMessage, acks: AckCoalescer | None = None) -> Delivery:
    """An aio-pika message as the core's Delivery, settled through that message (acks coalesced
    with the other deliveries of its channel when `acks` is given)."""

    async def settle(ack: bool, requeue: bool) -> None:
        if acks is None:
            await (message.ack() if ack else message.reject(requeue=requeue))
        elif ack:
            await acks.ack(message.delivery_tag or 0)
        else:
            await message.reject(requeue=requeue)
            acks.settled_elsewhere(message.delivery_tag or 0)

    return Delivery(
        body=message.body,
        headers=dict(message.headers or {}),
        message_id=message.message_id,
        priority=message.priority or 0,
        redelivered=bool(message.redelivered),
        routing_key=message.routing_key or "",
        _settle=settle,
    )


class _RabbitDeadLetterWalk(DeadLetterWalk):
    """basic.get from the head, unacked; closing the channel requeues every message not acked in place."""

    def __init__(
        self, lock: AbstractChannel, lock_queue: AbstractQueue, channel: AbstractChannel, queue: AbstractQueue
    ) -> None:
        self.lock, self.lock_queue, self.channel, self.queue = lock, lock_queue, channel, queue
        self.length = queue.declaration_result.message_count or 0

    async def _next(self) -> Delivery | None:
        with _unavailable("reading the dead letters"):
            message = await self.queue.get(no_ack=False, fail=False)
        return None if message is None else _delivery(message)

    async def end(self) -> None:
        with contextlib.suppress(*_UNAVAILABLE):
            await self.channel.close()
        await self.release(self.lock, self.lock_queue)

    @staticmethod
    async def release(lock: AbstractChannel, lock_queue: AbstractQueue) -> None:
        with contextlib.suppress(*_UNAVAILABLE):  # if the connection is gone, so is the exclusive queue
            await lock_queue.delete(if_unused=False, if_empty=False)
            await lock.close()


class _Consumer(Subscription):
    def __init__(self, broker: RabbitMQBroker, queue: AbstractQueue, tag: str) -> None:
        self.broker, self.queue, self.tag = broker, queue, tag

    async def cancel(self) -> None:
        # aio-pika forgets the consumer at once (a reconnect no longer restores it), then waits for a live
        # connection to send Basic.Cancel on: forever when the broker is gone (a worker was SIGKILLed at the end of
        # its grace period). A lost connection took the consumer with it, so there is nothing to wait for then.
        # Live only if both say so: aio-pika sets its event before its channels are restored, and a restore that
        # fails (the vhost or a queue is gone) tells only our close callback.
        connection = self.broker.connection
        live = self.broker.connected.is_set() and connection is not None and connection.connected.is_set()
        await self.broker.quietly("cancelling a consumer", self.queue.cancel(self.tag), None if live else 0.0)


class _StreamFollower(Subscription):
    """Follows one stream; on reconnect re-subscribes after the last offset it handled. Acks in runs: every
    STREAM_ACK_EVERY messages and at the end of a burst (with a window, `_WindowedStreamFollower`, once released)."""

    def __init__(self, broker: RabbitMQBroker, stream: str, handler: StreamHandler, offset: Offset) -> None:
        self.broker, self.stream, self.handler = broker, stream, handler
        self.offset: Offset = offset  # where a re-subscribe starts: after the last message handed over
        self.channel: AbstractRobustChannel | None = None
        self.tag: str | None = None
        self.queue: AbstractQueue | None = None
        self.batch: list[StreamMessage] = []
        self.last: AbstractIncomingMessage | None = None
        self.unacked = 0
        self.flush_scheduled = False
        self.cancelled = False
        self._resume: asyncio.Future[None] | None = None
        self._acks: set[asyncio.Future[None]] = set()  # acks not yet written: a cancel waits for them
        self.outage = Outage(f"stream {stream}", "stream", log)

    async def start(self) -> None:
        connection = self.broker.connection
        assert connection is not None
        self.channel = await connection.channel(publisher_confirms=False)
        await self.channel.set_qos(prefetch_count=STREAM_PREFETCH)
        self.queue = await self.channel.declare_queue(
            self.stream, durable=True, arguments=self.broker.topology.stream_arguments()
        )
        await self._subscribe()
        # aio-pika reopens the channel after a lost connection and after a channel error alone (the
        # broker closes one channel, e.g. a stream briefly unavailable); the consumer is ours to restore.
        self.channel.reopen_callbacks.add(self._on_reopen)
        self.channel.close_callbacks.add(self._on_close)

    def _on_close(self, _: Any, exc: BaseException | None = None) -> None:
        if not self.cancelled:
            # Closed with the connection: the connection's outage says so, once for every channel.
            self.outage.lost(exc, quiet=self.broker.outage.down or cause_of(exc) == "connection-lost")

    def _on_reopen(self, *_: Any) -> None:
        # Called while aio-pika restores the channel (and, after a lost connection, before the
        # connection is ready): consuming from here would wait for that restore, so it is a task.
        # One resume loop per follower: a failed consume closes the channel, aio-pika reopens it and
        # calls this again; a loop per reopen multiplied into hundreds of attempts a second (issue 22).
        if self._resume is None or self._resume.done():
            self._resume = asyncio.ensure_future(self._resume_when_ready())

    async def _resume_when_ready(self) -> None:
        assert self.channel is not None
        while not self.cancelled:
            try:
                await self.channel.ready()
                await self.resubscribe()
                self.outage.recovered()
                return
            except Exception as exc:  # logged once per outage, with its cause, by Outage
                delay = self.outage.delay(exc)
            await asyncio.sleep(delay)  # a backoff, not a synchronisation: the stream may still recover

    async def _subscribe(self) -> None:
        assert self.queue is not None
        # An int resumes after the last offset handled; pamqp encodes a datetime as an AMQP timestamp.
        offset = self.offset
        await self._before_consume()
        self.tag = await self.queue.consume(  # type: ignore[call-arg]  # robust queues take `robust`
            self._on_message, arguments={"x-stream-offset": offset}, robust=False
        )

    async def _before_consume(self) -> None:
        """Whatever the channel needs before a consumer starts on it: nothing here."""

    async def resubscribe(self) -> None:
        if self.cancelled:
            return
        # Messages received but not yet handed to the handler are applied, not dropped: the offset to
        # resume from already counts them, so dropping them here would lose them for good.
        self._hand_over()
        self.tag = None
        if self._forget_channel():
            await self._subscribe()

    def _forget_channel(self) -> bool:
        """The channel was reopened: its deliveries are gone, and their acks with them. True: consume at once."""
        self.unacked = 0
        self.last = None
        return True

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        raw = headers.get("x-stream-offset", 0)
        offset = raw if isinstance(raw, int) else 0
        if not self._admit(offset, message):
            return
        self.batch.append(StreamMessage(message.body, headers, offset, None))
        self.offset = offset + 1
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _admit(self, offset: int, message: AbstractIncomingMessage) -> bool:
        """Whether to hand `message` over: always, acked with the run it came in (`_flushed`)."""
        self.last = message
        self.unacked += 1
        return True

    def _flush(self) -> None:
        self.flush_scheduled = False
        self._hand_over()
        self._flushed()

    def _hand_over(self) -> None:
        batch, self.batch = self.batch, []
        if batch:
            try:
                self.handler(batch)
            except Exception:  # a reader bug must not stop the stream
                log.exception("stream handler failed", extra={"stream": self.stream})

    def _flushed(self) -> None:
        """After a batch went to the handler: ack up to the last message every so often and at a burst's end."""
        if self.last is not None and (self.unacked >= STREAM_ACK_EVERY or not self.batch):
            last, self.last, self.unacked = self.last, None, 0
            self._ack_later(last)

    def _ack_later(self, message: AbstractIncomingMessage) -> None:
        ack = asyncio.ensure_future(self._ack(message))
        self._acks.add(ack)
        ack.add_done_callback(self._acks.discard)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        # Never on a channel being closed: a frame that reaches the broker after the channel's close-ok ends the
        # whole connection ("CHANNEL_ERROR - expected 'channel.open'"), seen when a worker's start-up scan of the
        # control stream closed its follower at once.
        if self.cancelled:
            return
        with contextlib.suppress(*_UNAVAILABLE):
            await message.ack(multiple=True)

    def stop(self) -> None:
        """Follow no more: no resubscribe after a reopen, and no resume loop waiting for a connection."""
        self.cancelled = True
        if self._resume is not None:
            self._resume.cancel()

    async def cancel(self) -> None:
        self.stop()
        if self._acks:  # those already writing finish before the close
            await self.broker.quietly("finishing a stream's acks", asyncio.wait(set(self._acks)))
        if self.channel is not None:
            await self.broker.quietly("closing a stream's channel", self.channel.close())


class _WindowedStreamFollower(_StreamFollower):
    """A follower with a window (`Broker.follow`): the reader holds at most `window` messages it has not released,
    strictly: a message is acked once released, and the consumer's prefetch is what the window has room for, so
    RabbitMQ stops by itself. It counts that credit per message but sends a stream's chunk whole, so a delivery can
    overrun the window; then the follower drops what is over it, cancels the consumer, and consumes again from
    the first offset not handed over once the reader released half the window. Each message is handed over
    once, across reconnects too."""

    def __init__(
        self, broker: RabbitMQBroker, stream: str, handler: StreamHandler, offset: Offset, window: int
    ) -> None:
        super().__init__(broker, stream, handler, offset)
        self.window = window
        self.held: deque[tuple[int, AbstractIncomingMessage]] = deque()  # handed over, not released
        self.released: int | None = None  # the last offset released (set by the first message)
        self.acked = 0  # the highest delivery tag acked on this channel (an ack twice closes it)
        self.paused = False  # over the window; deliveries are dropped until the consumer consumes again
        self._subscribing = False  # a consume again is on its way: one at a time
        self._consuming = asyncio.Lock()  # a consume again and a resubscribe, one after the other

    async def _before_consume(self) -> None:
        # A consumer's prefetch is set before it consumes: what the reader has room for.
        assert self.channel is not None
        await self.channel.set_qos(prefetch_count=self.window - self._holds())
        self.paused = False

    async def resubscribe(self) -> None:
        async with self._consuming:
            # A consume again that waited for the reconnect may have consumed on the new channel already: beside
            # the consumer made here it was a second one, unknown once the other was cancelled, and the follower
            # stayed paused for good (released during an outage). An old tag cancels nothing on a new channel.
            # Within the publish timeout (the channel is ready; our own flag may not say so yet after a reconnect).
            stale = self.tag
            if stale is not None and self.queue is not None and not self.cancelled:
                await self.broker.quietly(
                    "cancelling a stream's consumer from before a reopen", self.queue.cancel(stale)
                )
            await super().resubscribe()

    def _forget_channel(self) -> bool:
        super()._forget_channel()
        self.held.clear()  # their channel is gone, and their acks with it
        self.acked = 0
        if self._room():
            return True
        self.paused = True  # the reader still holds the old channel's messages: consume once it released some
        return False

    def _admit(self, offset: int, message: AbstractIncomingMessage) -> bool:
        """Hand `message` over if the reader holds less than the window; else stop consuming."""
        self.last = message  # the latest delivery: acked with all before it once the consumer is cancelled
        if self.released is None:
            self.released = offset - 1
        if isinstance(self.offset, int) and offset < self.offset:  # handed over already (a late delivery)
            self.held.append((offset, message))  # acked once released, for its credit
            return False
        if self.paused or offset - self.released > self.window:
            if not self.paused:
                self.paused = True
                asyncio.ensure_future(self._pause())
            return False
        self.held.append((offset, message))
        return True

    def _flushed(self) -> None:
        """Nothing: a message is acked once released."""

    async def _pause(self) -> None:
        """Cancel the consumer that overran the window, and ack what it sent: it is gone, its credit with it."""
        tag = self.tag
        if self.queue is not None and tag is not None:
            # Bounded: a connection that stopped answering must not hold the follower. By the publish timeout even
            # with the connection lost, not at once as a consumer's cancel: our flag says "lost" until the reconnect
            # ended, and a pause of the new channel's consumer would then give up on a live one. Given up, the
            # channel goes (aiormq closes the channel of an RPC that timed out; a lost connection took it) and its
            # reopen starts afresh (resubscribe()); the tag kept meanwhile stops a release from consuming again
            # beside it (two consumers from one offset: seen leaving the follower paused for good).
            if not await self.broker.quietly("cancelling a stream's consumer over its window", self.queue.cancel(tag)):
                return
        if self.tag != tag:  # the channel was reopened meanwhile: resubscribe() started afresh
            return
        self.tag = None
        self.held.clear()
        last, self.last = self.last, None
        if last is not None:
            self._ack_upto(last)
        self._resume_if_room()

    def _holds(self) -> int:
        """Messages handed over and not released."""
        if isinstance(self.offset, int) and self.released is not None:
            return self.offset - 1 - self.released
        return 0

    def _room(self) -> bool:
        """The reader holds at most half of the window (consuming again for less would churn)."""
        return self._holds() * 2 <= self.window

    def _resume_if_room(self) -> None:
        if self.paused and self.tag is None and not self._subscribing and not self.cancelled and self._room():
            self._subscribing = True
            asyncio.ensure_future(self._consume_again())

    async def _consume_again(self) -> None:
        try:
            async with self._consuming:
                if self.paused and self.tag is None and not self.cancelled:  # else resubscribe() consumed meanwhile
                    await self._subscribe()
        except _UNAVAILABLE:  # tried again at the next release, or once the channel is reopened (_on_reopen)
            self.paused = True
        finally:
            self._subscribing = False

    def release(self, offset: int) -> None:
        self.released = offset
        last = None
        while self.held and self.held[0][0] <= offset:
            last = self.held.popleft()[1]
        if last is not None:
            self._ack_upto(last)
        self._resume_if_room()

    def _ack_upto(self, message: AbstractIncomingMessage) -> None:
        """Ack `message` and every delivery before it, unless a later ack did already (tasks ack in order)."""
        tag = message.delivery_tag or 0
        if tag > self.acked:
            self.acked = tag
            self._ack_later(message)


class RabbitMQBroker(Broker):
    def __init__(self, url: str, topology: Topology, *, name: str = "cpw", publish_timeout: float = 10.0) -> None:
        super().__init__(url, topology)
        self.name = name
        self.publish_timeout = publish_timeout
        self.connection: AbstractRobustConnection | None = None
        self.publisher: AbstractRobustChannel | None = None
        self.exchange: aio_pika.abc.AbstractExchange | None = None
        self.dlx: aio_pika.abc.AbstractExchange | None = None
        self.heartbeats: aio_pika.abc.AbstractExchange | None = None
        self.followers: list[_StreamFollower] = []
        # side queue -> the arguments it was declared with (None: passively, as it exists); see _probe_side_queues
        self.side_arguments: dict[str, dict[str, Any] | None] = {}
        self.legacy_side_queues: list[str] = []  # of another type than the job queue's (an earlier release's)
        self._consume_channel: AbstractRobustChannel | None = None
        self._jobs: set[asyncio.Future[None]] = set()
        self.job_acks: AckCoalescer | None = None  # of the current consuming channel (frames vs acks)
        self.retry_mover: RetryMover | None = None  # started with the job consumer
        self.outage = Outage("broker connection", "connection", log)
        # aio-pika's reconnect loop waits `reconnect_interval` between attempts; we set it from this
        # backoff after each failed attempt (close callbacks) and reset it once reconnected.
        self.reconnect_backoff = Backoff()
        self._closing = False
        self._gave_up = False  # a cancel or close given up on a broker that did not answer: logged once

    def __repr__(self) -> str:
        return f"RabbitMQBroker({redact_url(self.url)})"

    async def connect(self) -> None:
        quiet_library_loops()
        self._closing = False
        try:
            self.connection = await aio_pika.connect_robust(
                self.url,
                client_properties={"connection_name": self.name},
                reconnect_interval=self.reconnect_backoff.base,
                fail_fast=True,
                connection_class=RobustConnection,
            )
        except Exception as exc:
            raise BrokerUnavailable(f"cannot connect to {redact_url(self.url)}: {redact_text(str(exc))}") from exc
        try:
            await self._probe_side_queues()
            self.publisher = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
            await self._declare(self.publisher)
            await self.declare_delay_cascade()
        except aiormq.exceptions.ChannelPreconditionFailed:
            await self.connection.close()
            raise  # the topology on the broker disagrees with our settings: retrying cannot help
        except (*_UNAVAILABLE, aiormq.exceptions.ChannelNotFoundEntity) as exc:
            # Right after a broker restart a stream's home node may still be "down or inaccessible":
            # a passing state, so the caller's backoff retries instead of the process exiting.
            await self.connection.close()
            raise BrokerUnavailable(f"cannot declare the topology: {redact_text(str(exc))}") from exc
        self.connection.close_callbacks.add(self._on_close)
        self.connection.reconnect_callbacks.add(self._on_reconnect)
        self.connected.set()

    async def _declare(self, channel: AbstractRobustChannel) -> None:
        t = self.topology
        self.exchange = await channel.declare_exchange(t.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        self.dlx = await channel.declare_exchange(t.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        self.heartbeats = await channel.declare_exchange(
            t.heartbeat_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        jobs = await channel.declare_queue(t.jobs_queue, durable=True, arguments=t.jobs_queue_arguments())
        await jobs.bind(self.exchange, "#")
        dlq = (await self.declare_side_queues(channel))[t.dead_letter_queue]
        await dlq.bind(self.dlx, t.dead_letter_queue)
        # The job queue is the only binding of the exchange, so `mandatory` tells when a job reaches
        # no queue; Accepted records go to the stream from the submitter (see queue.py).
        await channel.declare_queue(t.results_stream, durable=True, arguments=t.stream_arguments())
        await channel.declare_queue(t.control_stream, durable=True, arguments=t.stream_arguments())

    async def _probe_side_queues(self) -> None:
        """Find the arguments each side queue (the DLQ, the delay queues) takes; each refusal closes its channel.

        Each is declared first as `Topology.side_queue_type` asks (the job queue's type). RabbitMQ refuses
        to declare an existing queue with other arguments (PRECONDITION_FAILED), and cannot change a queue's
        type: a classic queue made by an earlier release beside a quorum job queue is kept as it is and
        reported, and `cpw queues migrate` makes it quorum (docs/operations.md). A DLQ that refuses its bound
        too (made before the bound existed) is declared passively and `dlq_bounded` is False (the worker
        exports it as `cpw_worker_dlq_bounded 0`).
        """
        assert self.connection is not None
        t = self.topology
        self.side_arguments, self.legacy_side_queues = {}, []
        channel: AbstractRobustChannel | None = None
        try:
            for name in t.side_queues:
                candidates = [t.side_queue_arguments(name)]
                if t.side_queue_type != "classic":
                    candidates.append(t.side_queue_arguments(name, "classic"))
                taken: dict[str, Any] | None = None
                for candidate in candidates:
                    if channel is None:
                        channel = await self.connection.channel(publisher_confirms=False)
                    try:
                        await channel.declare_queue(name, durable=True, arguments=candidate)
                    except aiormq.exceptions.ChannelPreconditionFailed:
                        with contextlib.suppress(Exception):
                            await channel.close()
                        channel = None
                        continue
                    taken = candidate
                    break
                self.side_arguments[name] = taken
                if taken is not candidates[0]:
                    self.legacy_side_queues.append(name)
        finally:
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()
        self.dlq_bounded = self.side_arguments[t.dead_letter_queue] is not None
        if not self.dlq_bounded:
            log.warning(
                "the dead-letter queue %s exists with other arguments and stays unbounded by this process; "
                "bound it with a policy, e.g. rabbitmqctl set_policy -p <vhost> --apply-to queues cpw-dlq "
                '\'^%s$\' \'{"max-length":%d,"message-ttl":%d,"overflow":"%s"}\', '
                "or delete the drained queue so it is declared again (docs/operations.md)",
                t.dead_letter_queue,
                t.dead_letter_queue.replace(".", "\\."),
                t.dlq_max_length,
                t.dlq_max_age * 1000,
                t.dlq_overflow,
            )
        if self.legacy_side_queues:
            log.warning(
                "%d side queues (%s) are not %s queues like the job queue (made by an earlier release) and are "
                "used as they are: a job waiting in one for its retry, or a dead letter, is lost with its node. "
                "Run `cpw queues migrate`, then restart the workers and the API (docs/operations.md)",
                len(self.legacy_side_queues),
                ", ".join(self.legacy_side_queues),
                t.side_queue_type,
            )

    async def declare_side_queues(self, channel: AbstractRobustChannel) -> dict[str, AbstractQueue]:
        """The DLQ and the delay queues with the arguments each took (`_probe_side_queues`), by name."""
        t = self.topology
        queues: dict[str, AbstractQueue] = {}
        for name in t.side_queues:
            args = self.side_arguments.get(name, t.side_queue_arguments(name))
            queues[name] = await (
                channel.declare_queue(name, passive=True)
                if args is None
                else channel.declare_queue(name, durable=True, arguments=args)
            )
        return queues

    async def declare_delay_cascade(self, *, check: bool = True) -> None:
        """The delayed jobs' levels (topology.py): durable, so jobs waiting in them outlive a broker restart.

        Its 90-odd declarations and bindings cost the broker ~30-70 ms (each binding is a metadata
        transaction), on every connect of every process. So a process first asks whether the entry
        exchange, declared last, exists (`check`), and declares only if not. They go out without waiting
        for each reply (nowait) on a channel of their own; the last, passive declaration waits for all of
        them: a failed one closes the channel, which fails that wait. A cascade broken later (an operator
        deleted a level) makes a delayed job unroutable, and `publish_delayed` declares it again.

        Classic queues whatever the job queue's type (unlike the retry queues): the level queues have no
        consumer, so a quorum queue's replication would be their only gain, at the cost of a Raft log per
        level on every node and a migration of 30 levels; quorum delay queues lost their waiting jobs on a
        node loss anyway on 3.10.8 (docs/reliability.md, known limits)."""
        assert self.connection is not None
        t = self.topology
        if check:
            probe = await self.connection.channel(publisher_confirms=False)
            try:
                await probe.declare_exchange(t.delay_entry, passive=True)
                return
            except aiormq.exceptions.ChannelNotFoundEntity:
                pass  # its channel is closed by the broker
            finally:
                with contextlib.suppress(Exception):
                    await probe.close()
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            ch = cast(aiormq.Channel, await channel.get_underlay_channel())
            below = t.delay_exchange(-1)
            await ch.exchange_declare(below, exchange_type="fanout", durable=True, nowait=True)
            await ch.queue_bind(t.jobs_queue, below, nowait=True)
            for level in range(DELAY_LEVELS):
                exchange, queue = t.delay_exchange(level), t.delay_queue(level)
                await ch.exchange_declare(exchange, exchange_type="topic", durable=True, nowait=True)
                await ch.queue_declare(queue, durable=True, arguments=t.delay_queue_arguments(level), nowait=True)
                await ch.queue_bind(queue, exchange, t.delay_pattern(level, "1"), nowait=True)
                await ch.exchange_bind(below, exchange, t.delay_pattern(level, "0"), nowait=True)
                below = exchange
            await ch.exchange_declare(t.delay_entry, exchange_type="topic", durable=True, nowait=True)
            await ch.exchange_bind(below, t.delay_entry, "#", nowait=True)
            await ch.exchange_declare(t.delay_entry, passive=True)  # its reply: all of them were applied
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    def _on_close(self, _: Any = None, exc: BaseException | None = None) -> None:
        # Called when the connection is lost and again after each failed reconnect attempt (aio-pika
        # runs the close callbacks when restoring the channels fails): the next wait backs off.
        if self.connection is not None and not self.connection.is_closed and not self._closing:
            self.connected.clear()
            self.outage.lost(exc)
            with contextlib.suppress(AttributeError):
                self.connection.reconnect_interval = self.reconnect_backoff.next()  # type: ignore[attr-defined]

    async def _on_reconnect(self, *_: Any) -> None:
        self.reconnects += 1  # stream followers resumed already, as their channels reopened
        self.outage.recovered()
        self.reconnect_backoff.reset()
        with contextlib.suppress(AttributeError):
            self.connection.reconnect_interval = self.reconnect_backoff.base  # type: ignore[union-attr]
        self.connected.set()
        for callback in self.on_reconnect:
            callback()
        try:
            await self.declare_delay_cascade()  # a broker that lost its definitions gets them back
        except Exception as exc:  # a delayed job is then refused (unroutable), never lost
            log.warning("delay cascade not declared after the reconnect: %s", redact_text(repr(exc)))

    async def close(self, timeout: float | None = None) -> None:
        self._closing = True
        self.connected.clear()
        for follower in self.followers:
            follower.stop()  # their channels close with the connection
        if self.retry_mover is not None:  # the retries it holds go back to their queues with the connection
            mover, self.retry_mover = self.retry_mover, None
            mover.stop()
        if self.connection is not None:
            await self.quietly("closing the connection", self.connection.close(), timeout)

    async def quietly(self, what: str, step: Awaitable[object], timeout: float | None = None) -> bool:
        """Await one step of a cancel or close for at most `timeout` seconds (default: the publish timeout; 0
        runs it up to its first wait), and never raise: a broker that is gone answers nothing, and whoever
        cancels or closes is on its way out. False if it gave up; the first give-up is logged, once per broker."""
        limit = self.publish_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                await step
            return True
        except Exception as exc:  # TimeoutError, or whatever a dead connection raised
            if self._gave_up:
                return False
            self._gave_up = True
            if not isinstance(exc, TimeoutError):
                why = redact_text(repr(exc))
            else:
                why = f"no answer in {limit:g}s" if limit else "the connection is gone"
            log.warning("broker: gave up %s (%s); later give-ups are not logged", what, why)
            return False

    async def _publish(self, exchange: str | None, body: bytes, properties: Properties, key: str) -> None:
        """Publish on the confirmed channel and return once the broker confirmed the message.

        Straight through aiormq rather than aio-pika's Exchange.publish: no aio-pika Message per
        publish, and `wait=False`, so the channel lock is released as soon as the frames are queued
        for the connection's writer. With aio-pika's default (wait for the socket drain while holding
        the lock) concurrent publishers go through the writer one at a time, a few event-loop turns
        each. The guarantee is unchanged: the confirm (or a nack, a return, a closed channel, the
        timeout) is awaited either way, and the lock still keeps delivery tags in write order.
        """
        if exchange is None or self.publisher is None or not self.connected.is_set():
            raise BrokerUnavailable("broker not connected")
        try:
            # the concrete aiormq Channel: its basic_publish takes `wait`, the abstract one does not say so
            channel = cast(aiormq.Channel, await self.publisher.get_underlay_channel())
            await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=key,
                properties=properties,
                mandatory=True,
                timeout=self.publish_timeout,
                wait=False,
            )
        except DeliveryError as exc:  # a nack, or (PublishError) a return: on_return_raises is set
            frame = getattr(exc, "frame", None)
            if frame is not None and getattr(frame, "reply_code", None) == 312:
                raise UnroutableJob(f"no queue bound for routing key {key!r} on {exchange!r}") from exc
            raise BrokerUnavailable(f"broker refused the message: {exc}") from exc
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"broker did not confirm: {redact_text(repr(exc))}") from exc

    async def publish_job(
        self, body: bytes, *, message_id: str, routing_key: str, priority: int, headers: Headers
    ) -> None:
        properties = Properties(
            headers={KIND: "job", **headers},
            message_id=message_id,
            priority=priority,
            delivery_mode=PERSISTENT,
            content_type=JSON,
        )
        await self._publish(self.exchange.name if self.exchange else None, body, properties, routing_key)

    async def publish_retry(
        self, body: bytes, *, message_id: str, priority: int, headers: Headers, attempt: int, delay: float
    ) -> None:
        queue = self.topology.retry_queue(attempt)
        # Moved back to the job queue when due by a worker (retries.py), not by the broker's dead-lettering:
        # no expiration (the broker's at-least-once dead-lettering on RabbitMQ 3.10.8 kept expired retries
        # from the job queue for good after a node loss), unless the queue is an earlier release's, which
        # the workers do not consume (until `cpw queues migrate`).
        held = queue not in self.legacy_side_queues
        properties = Properties(
            headers={**headers, **due_header(delay)},
            message_id=message_id,
            priority=priority,
            delivery_mode=PERSISTENT,
            content_type=JSON,
            expiration=None if held else str(int(max(delay, 0.001) * 1000)),  # milliseconds
        )
        try:
            await self._publish(DEFAULT_EXCHANGE, body, properties, queue)
        except UnroutableJob as exc:
            # The queue is gone. An earlier release's is being replaced (`cpw queues migrate`): the job goes back to
            # its queue. One the workers consume was deleted: declared again and consumed afresh (retries.py).
            mover = self.retry_mover
            if not held or mover is None:
                raise
            with _unavailable(f"cannot declare {queue} again"):
                await mover.renew(queue, exc, self.publish_timeout)
            await self._publish(DEFAULT_EXCHANGE, body, properties, queue)

    async def publish_delayed(
        self, body: bytes, *, message_id: str, priority: int, headers: Headers, delay: float
    ) -> None:
        properties = Properties(
            headers={KIND: "job", **without_deaths(headers)},
            message_id=message_id,
            priority=priority,
            delivery_mode=PERSISTENT,
            content_type=JSON,
        )
        key = self.topology.delay_routing_key(delay_ms(delay))
        try:
            await self._publish(self.topology.delay_entry, body, properties, key)
        except UnroutableJob:  # a level of the cascade is gone: declare it again, then try once more
            with _unavailable("cannot declare the delay cascade"):
                await self.declare_delay_cascade(check=False)
            await self._publish(self.topology.delay_entry, body, properties, key)

    async def republish_job(self, body: bytes, *, message_id: str | None, priority: int, headers: Headers) -> None:
        properties = Properties(
            headers=headers, message_id=message_id, priority=priority, delivery_mode=PERSISTENT, content_type=JSON
        )
        await self._publish(DEFAULT_EXCHANGE, body, properties, self.topology.jobs_queue)

    async def publish_dead_letter(self, body: bytes, *, message_id: str | None, headers: Headers) -> None:
        properties = Properties(headers=headers, message_id=message_id, delivery_mode=PERSISTENT, content_type=JSON)
        await self._publish(self.dlx.name if self.dlx else None, body, properties, self.topology.dead_letter_queue)

    async def publish_events(self, bodies: Sequence[tuple[bytes, Headers]]) -> None:
        stream = self.topology.results_stream
        if len(bodies) == 1:  # the common case: no gather on the hot path
            body, headers = bodies[0]
            properties = Properties(headers=headers, delivery_mode=PERSISTENT, content_type=JSON)
            await self._publish(DEFAULT_EXCHANGE, body, properties, stream)
        else:
            await asyncio.gather(
                *(
                    self._publish(
                        DEFAULT_EXCHANGE,
                        body,
                        Properties(headers=headers, delivery_mode=PERSISTENT, content_type=JSON),
                        stream,
                    )
                    for body, headers in bodies
                )
            )

    async def publish_control(self, body: bytes, headers: Headers) -> None:
        properties = Properties(headers=headers, delivery_mode=PERSISTENT, content_type=JSON)
        await self._publish(DEFAULT_EXCHANGE, body, properties, self.topology.control_stream)

    async def publish_heartbeat(self, body: bytes) -> None:
        if self.heartbeats is None or not self.connected.is_set():
            return
        message = aio_pika.Message(body, content_type="application/json")
        # Fire and forget, yet bounded: a connection that stopped answering held a stopping worker here.
        with contextlib.suppress(*_UNAVAILABLE, DeliveryError):  # TimeoutError included
            async with asyncio.timeout(self.publish_timeout):
                await self.heartbeats.publish(message, "", mandatory=False)

    async def consume_jobs(self, handler: JobHandler, prefetch: int) -> Subscription:
        assert self.connection is not None
        with _unavailable("cannot consume jobs"):
            channel = await self.connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            self._consume_channel = channel
            # Declared on this channel first, so that after a reconnect aio-pika restores them before
            # the consumer: while the node that homes a classic one is down the restore fails there, and
            # the worker takes no jobs it could neither retry nor dead-letter (it took a prefetch of jobs
            # at each reconnect attempt, once a second, and handed them back).
            await self.declare_side_queues(channel)
            queue = await channel.declare_queue(
                self.topology.jobs_queue, durable=True, arguments=self.topology.jobs_queue_arguments()
            )

        acks: AckCoalescer | None = None

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal acks
            try:
                underlay = message.channel
            except aio_pika.exceptions.ChannelInvalidStateError:
                return  # its channel closed already: the broker redelivers it
            if acks is None or acks.channel is not underlay:  # a reopened channel numbers from 1 again
                acks = self.job_acks = AckCoalescer(underlay)
            delivery = _delivery(message, acks)
            # The job runs in a task of its own, not in aio-pika's consumer task: closing the channel
            # (the broker's consumer timeout, a lost connection) cancels that task, and a job cancelled
            # with it would be cut off, requeued and cut off again, forever if it outlasts the consumer
            # timeout. On its own it finishes and publishes its outcome; the worker settles its redelivery.
            job = asyncio.ensure_future(
                handler(delivery) if self.connected.is_set() else self._when_connected(handler, delivery)
            )
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

        with _unavailable("cannot consume jobs"):
            tag = await queue.consume(on_message)
            if self.retry_mover is None:  # the retries this worker publishes, and others', back when due
                mover = RetryMover(self)
                await mover.start()
                self.retry_mover = mover
        return _Consumer(self, queue, tag)

    async def _when_connected(self, handler: JobHandler, delivery: Delivery) -> None:
        """Run a delivery that came before the connection counts as restored: aio-pika restores the
        consumer before the publishing channel and runs our reconnect callback last, and a job run in
        between found no channel for its outcome and was handed back (32 jobs at each reconnect in the
        cluster drill). Waits at most the publish timeout; the outcome's publish decides after that."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), self.publish_timeout)
        await handler(delivery)

    async def follow(
        self, stream: str, handler: StreamHandler, offset: Offset = "first", window: int | None = None
    ) -> Subscription:
        follower = (
            _StreamFollower(self, stream, handler, offset)
            if window is None
            else _WindowedStreamFollower(self, stream, handler, offset, window)
        )
        with _unavailable(f"cannot follow {stream}"):
            await follower.start()
        self.followers.append(follower)
        return follower

    async def subscribe_heartbeats(self, handler: HeartbeatHandler) -> Subscription:
        assert self.connection is not None

        async def on_message(message: AbstractIncomingMessage) -> None:
            handler(message.body)

        # As following a stream does: a broker that goes away mid-call is BrokerUnavailable, which the
        # API's start retries (a CONNECTION_FORCED here used to end the process).
        with _unavailable("cannot subscribe to heartbeats"):
            channel = await self.connection.channel(publisher_confirms=False)
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            assert self.heartbeats is not None
            exchange = await channel.declare_exchange(
                self.topology.heartbeat_exchange, aio_pika.ExchangeType.FANOUT, durable=True
            )
            await queue.bind(exchange)
            tag = await queue.consume(on_message, no_ack=True)
        return _Consumer(self, queue, tag)

    @property
    def retries_held(self) -> int:
        return len(self.retry_mover.moves) if self.retry_mover is not None else 0

    async def queue_stats(self) -> QueueStats:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            t = self.topology
            jobs = await channel.declare_queue(t.jobs_queue, passive=True)
            dlq = await channel.declare_queue(t.dead_letter_queue, passive=True)
            retrying = 0
            for attempt in t.retry_attempts:
                queue = await channel.declare_queue(t.retry_queue(attempt), passive=True)
                retrying += queue.declaration_result.message_count or 0
            delayed = 0
            for level in range(DELAY_LEVELS):  # a job in transit between two levels is in neither, briefly
                queue = await channel.declare_queue(t.delay_queue(level), passive=True)
                delayed += queue.declaration_result.message_count or 0
            ready = jobs.declaration_result.message_count or 0
            consumers = jobs.declaration_result.consumer_count or 0
            # AMQP reports only ready messages; unacked needs the management API (see fleet stats).
            return QueueStats(ready, 0, consumers, dlq.declaration_result.message_count or 0, retrying, delayed)
        finally:
            await channel.close()

    async def _walk_dead_letters(self, wait: float) -> DeadLetterWalk:
        """Exclusive across processes through an exclusive queue: RabbitMQ lets one connection at a time
        declare it (another gets RESOURCE_LOCKED) and deletes it when that connection dies, so a crashed
        walker cannot leave the lock held."""
        assert self.connection is not None
        name = f"{self.topology.dead_letter_queue}.walk"
        deadline = asyncio.get_running_loop().time() + wait
        backoff = 0.02
        while True:
            with _unavailable("locking the dead letters"):
                lock = await self.connection.channel(publisher_confirms=False)
                try:
                    lock_queue = await lock.declare_queue(name, exclusive=True, auto_delete=True)
                    break
                except aiormq.exceptions.ChannelLockedResource:
                    pass  # the channel is closed by the broker
            if asyncio.get_running_loop().time() + backoff > deadline:
                raise DeadLettersBusy("another process's walk of the dead letters did not end in time")
            await asyncio.sleep(backoff)  # no event tells another process's walk ended: poll, backing off
            backoff = min(backoff * 2, 0.5)
        try:
            with _unavailable("opening the dead letters"):
                channel = await self.connection.channel(publisher_confirms=False)
                queue = await channel.declare_queue(self.topology.dead_letter_queue, passive=True)
        except BaseException:
            await _RabbitDeadLetterWalk.release(lock, lock_queue)
            raise
        return _RabbitDeadLetterWalk(lock, lock_queue, channel, queue)
