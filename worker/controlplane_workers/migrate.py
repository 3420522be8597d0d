"""`cpw queues migrate`: make the DLQ and the delay queues the job queue's type, keeping their messages.

RabbitMQ cannot change a queue's type in place, and refuses to declare an existing queue with other
arguments. So an install whose side queues an earlier release made classic beside a quorum job queue
keeps them classic (the broker reports them, rabbitmq.py `_probe_side_queues`) until this moves them:

- a delay queue: its waiting retries go straight to the job queue (they run a little early), then the
  empty queue is deleted and declared anew;
- the DLQ: its dead letters go to a holding queue of the new type, the empty DLQ is deleted and declared
  anew, and they come back.

Each message is published (confirmed) before it is acked, so a failure half-way loses nothing (at worst a
message is in two places). A worker that publishes a retry or a dead letter to a queue while it is being
replaced gets it refused (unroutable) and hands its job back to the queue: nothing is lost either. The
delete is `if-empty`: a message that arrived since the move fails it, and the move runs again.
Restart the workers and the API afterwards: their channels still declare the old arguments on a reconnect.
The delay cascade of delayed jobs (`provider.jobs.delay.<k>`) is classic on every install and is not
moved (docs/reliability.md, known limits).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel

from .broker.rabbitmq import RabbitMQBroker

HOLDING = ".migrating"  # suffix of the DLQ's holding queue
ROUNDS = 10  # moves of one queue before giving up (workers keep filling it faster than it empties)


async def migrate_side_queues(broker: RabbitMQBroker, say: Callable[[str], None] = print) -> list[str]:
    """Migrate every side queue the broker found of another type; returns their names. `broker` is connected."""
    t = broker.topology
    done: list[str] = []
    for name in list(broker.legacy_side_queues):
        args = t.side_queue_arguments(name)
        if name == t.dead_letter_queue:
            holding = name + HOLDING
            await _declare(broker, holding, {"x-queue-type": t.side_queue_type})
            moved = await _replace(broker, name, args, to=holding)
            back = await _move(broker, holding, to=name)
            await _delete(broker, holding)
            say(f"{name}: now {t.side_queue_type}, {moved} dead letters kept ({back} moved back)")
        else:
            moved = await _replace(broker, name, args, to=t.jobs_queue)
            say(f"{name}: now {t.side_queue_type}, {moved} waiting retries sent to {t.jobs_queue}")
        done.append(name)
    broker.legacy_side_queues = [q for q in broker.legacy_side_queues if q not in done]
    if t.dead_letter_queue in done:
        await _bind_dead_letters(broker)
    return done


async def _replace(broker: RabbitMQBroker, name: str, args: dict[str, Any], *, to: str) -> int:
    """Empty `name` into `to`, delete it once empty, declare it with `args`; messages moved."""
    moved = 0
    for _ in range(ROUNDS):
        moved += await _move(broker, name, to=to)
        try:
            await _delete(broker, name, if_empty=True)
        except aiormq.exceptions.ChannelPreconditionFailed:  # a message arrived since the move
            continue
        await _declare(broker, name, args)
        broker.side_arguments[name] = args
        return moved
    raise RuntimeError(f"{name} kept filling up during {ROUNDS} moves; stop the workers and run it again")


async def _move(broker: RabbitMQBroker, source: str, *, to: str) -> int:
    """Every message of `source` published to the queue `to` (confirmed), then acked. The expiration goes:
    a retry moves to the job queue, and a holding queue must not expire what it holds."""
    moved = 0
    async with _channel(broker, confirms=True) as channel:
        queue = await channel.declare_queue(source, passive=True)
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            copy = aio_pika.Message(
                message.body,
                headers=dict(message.headers or {}),
                message_id=message.message_id,
                priority=message.priority,
                content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await channel.default_exchange.publish(copy, routing_key=to, mandatory=True)
            await message.ack()
            moved += 1
    return moved


async def _declare(broker: RabbitMQBroker, name: str, args: dict[str, Any]) -> None:
    async with _channel(broker) as channel:
        await channel.declare_queue(name, durable=True, arguments=args)


async def _delete(broker: RabbitMQBroker, name: str, *, if_empty: bool = False) -> None:
    async with _channel(broker) as channel:
        await channel.queue_delete(name, if_empty=if_empty)


async def _bind_dead_letters(broker: RabbitMQBroker) -> None:
    t = broker.topology
    async with _channel(broker) as channel:
        queue = await channel.declare_queue(t.dead_letter_queue, passive=True)
        await queue.bind(t.dead_letter_exchange, t.dead_letter_queue)


@contextlib.asynccontextmanager
async def _channel(broker: RabbitMQBroker, *, confirms: bool = False):  # noqa: ANN202
    """A channel of its own: a refusal closes it. With `confirms`, a message that reaches no queue raises."""
    assert broker.connection is not None
    channel: AbstractChannel = await broker.connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
    try:
        yield channel
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
