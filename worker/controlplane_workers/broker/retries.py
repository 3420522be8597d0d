"""Retries moved back to the job queue by the workers, not by the broker's dead-lettering.

A retry waits in the delay queue of its attempt (`provider.jobs.retry.<n>`) until its due time, written in
its `x-cpw-due` header. Every worker consumes the delay queues: it holds each retry unacked until it is due,
publishes it to the job queue (confirmed), and only then acks it. So a retry leaves its delay queue only once
the job queue has it: at least once by construction, whatever the broker does. A worker that dies or loses
its connection while it holds retries hands them back unacked, and the next one holds them until the same due
time (a copy may reach the job queue twice; readers keep the first outcome). The due time is the publishing
worker's wall clock: workers whose clocks disagree move a retry that much early or late.

Before, the broker expired a retry (per-message TTL) and dead-lettered it to the job queue, at least once
between quorum queues. On RabbitMQ 3.10.8 that kept every retry waiting in a delay queue whose leader was lost
for good in the queue's dead-letter state, never handed on (`lost-retrying` drill; docs/reliability.md). The
delay queues keep their dead-letter arguments (RabbitMQ refuses a redeclaration with other ones), but a retry
carries no expiration now, so the broker never dead-letters it.

A worker holds at most `HOLD` retries per delay queue (their bodies are in memory). A queue is FIFO and its
retries share one delay up to the jitter, so the head is about the earliest due: a retry behind a held one
is late by at most the jitter's spread, as with a TTL, which the broker too expires only at the head.
RabbitMQ's `consumer_timeout` (30 min by default) must exceed the longest retry delay
(`CPW_RETRY_MAX_DELAY` x (1 + `CPW_RETRY_JITTER`)): past it the broker closes the channel and the retries
go back to their queue, to be held again (late, not lost).

A delay queue deleted under the mover (by hand) is declared again by the first worker whose retry it
refused (`renew`). RabbitMQ tells the consumers of a deleted queue with a basic.cancel, and aio-pika consumes
again once the queue exists; but a quorum queue deleted and declared again at once (RabbitMQ 3.10) keeps the
old consumer registered without telling it anything: what reaches the new queue is delivered to nobody and
waits, unacked, until that consumer's channel closes. So `renew` consumes afresh on a new channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from ..errors import BrokerUnavailable, UnroutableJob
from .base import Headers, Subscription
from .recovery import Backoff, Outage, cause_of

if TYPE_CHECKING:
    from .rabbitmq import RabbitMQBroker

log = logging.getLogger(__name__)

DUE = "x-cpw-due"  # epoch milliseconds at which a retry goes back to the job queue
HOLD = 100


def due_header(delay: float) -> Headers:
    return {DUE: int((time.time() + max(delay, 0.0)) * 1000)}


def due_of(message: AbstractIncomingMessage, now: float) -> float:
    """Epoch seconds. A retry of an earlier release has no header but an expiration: counted from now
    (late by as long as it waited already, never early)."""
    due = (message.headers or {}).get(DUE)
    if isinstance(due, int):
        return due / 1000
    expiration = message.expiration
    if isinstance(expiration, int | float):
        return now + float(expiration)  # aio-pika decodes the expiration to seconds
    return now


class RetryMover(Subscription):
    """Consumes every delay queue on a channel of its own and moves each retry when it is due."""

    def __init__(self, broker: RabbitMQBroker) -> None:
        self.broker = broker
        self.channel: AbstractRobustChannel | None = None
        self.moves: set[asyncio.Task[None]] = set()
        self.moved = 0
        self.queues: set[str] = set()  # the delay queues it consumes
        self.renewals = 0
        self._renewal: asyncio.Future[None] | None = None
        self.outage = Outage("retry mover", "retries", log)

    async def start(self) -> None:
        connection = self.broker.connection
        assert connection is not None
        self.channel = await connection.channel(publisher_confirms=False)
        await self.channel.set_qos(prefetch_count=HOLD)  # per consumer: HOLD per delay queue
        # Declared on this channel as the consuming channel does, so aio-pika restores them after a reconnect.
        queues = await self.broker.declare_side_queues(self.channel)
        for attempt in self.broker.topology.retry_attempts:
            name = self.broker.topology.retry_queue(attempt)
            if name in self.broker.legacy_side_queues:
                continue  # as an earlier release left it: the broker's TTL moves its retries until `cpw queues migrate`
            await queues[name].consume(self._on_message)
            self.queues.add(name)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        move = asyncio.ensure_future(self._move(message, due_of(message, time.time())))
        self.moves.add(move)
        move.add_done_callback(self.moves.discard)

    async def _move(self, message: AbstractIncomingMessage, due: float) -> None:
        wait = due - time.time()
        if wait > 0:
            await asyncio.sleep(wait)  # the retry's delay itself
        backoff = Backoff()
        while True:
            try:
                message.channel  # noqa: B018  # raises once its channel closed: the broker has it back
            except aio_pika.exceptions.ChannelInvalidStateError:
                return
            try:
                await self.broker.republish_job(
                    message.body,
                    message_id=message.message_id,
                    priority=message.priority or 0,
                    headers={k: v for k, v in (message.headers or {}).items() if k != DUE},
                )
                break
            except (BrokerUnavailable, UnroutableJob) as exc:  # held on: the connection's outage is logged
                log.debug("retry %s not moved yet: %r", message.message_id, exc)
                await asyncio.sleep(backoff.next())  # a backoff, not a synchronisation
        with contextlib.suppress(Exception):  # a lost ack: the retry comes back and is moved again (a copy)
            await message.ack()
        self.moved += 1

    async def renew(self, name: str, why: UnroutableJob, timeout: float) -> None:
        """Consume every delay queue afresh on a new channel, declaring again `name`, which refused a retry (`why`).

        The retries held on the old channel go back to their queues as it closes, and are held again until the
        same due time. Concurrent callers share one renewal; it retries with backoff until it succeeds, and a
        caller waits for it at most `timeout` seconds (then BrokerUnavailable: its job goes back to the queue).
        A classic queue whose node is down refuses retries too: then `why` is raised and nothing is renewed."""
        if self._renewal is None or self._renewal.done():
            deleted = await self._deleted(name)
            if not deleted:
                raise why
            if self._renewal is None or self._renewal.done():  # no other caller started one meanwhile
                self.outage.lost(why)
                self._renewal = asyncio.ensure_future(self._renew())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._renewal)
        except TimeoutError:
            raise BrokerUnavailable(f"the delay queues are not consumed again after {timeout:g}s") from why

    async def _deleted(self, name: str) -> bool:
        """Whether `name` was deleted (it may exist again already), rather than away with its node."""
        connection = self.broker.connection
        assert connection is not None
        probe = await connection.channel(publisher_confirms=False)
        try:
            await probe.declare_queue(name, passive=True)
            return True  # declared again since it refused the retry: our consumer of the old one may be stale
        except aiormq.exceptions.ChannelNotFoundEntity as exc:  # the broker closed the probe channel
            return cause_of(exc) != "node-down"
        finally:
            with contextlib.suppress(Exception):
                await probe.close()

    async def _renew(self) -> None:
        while True:
            self._drop_moves()
            await self._close_channel()
            try:
                await self.start()
                break
            except Exception as exc:  # the connection or the queue's node is away: logged once, by the outage
                delay = self.outage.delay(exc)
            await asyncio.sleep(delay)  # a backoff, not a synchronisation
        self.renewals += 1
        self.outage.recovered()

    def _drop_moves(self) -> None:
        for move in list(self.moves):
            move.cancel()

    def stop(self) -> None:
        """Move no more: the retries held go back to their queues, unacked, when the channel closes."""
        self._drop_moves()
        if self._renewal is not None:
            self._renewal.cancel()

    async def cancel(self) -> None:
        self.stop()
        await self._close_channel()

    async def _close_channel(self) -> None:
        """Close the consuming channel, bounded by the broker: the retries it held go back to their queues."""
        old, self.channel = self.channel, None
        self.queues.clear()
        if old is not None:
            await self.broker.quietly("closing the retry mover's channel", old.close())
