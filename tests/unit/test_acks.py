"""AckCoalescer against a channel that keeps RabbitMQ's books: an ack may only name an outstanding
delivery tag (else the broker closes the channel: "unknown delivery tag"), and `multiple` settles
every outstanding tag up to it. The property that matters: no delivery is acked before it finished."""

from __future__ import annotations

import asyncio
import random

import pytest

from controlplane_workers.broker.acks import AckCoalescer


class BookkeepingChannel:
    def __init__(self, tags: int) -> None:
        self.outstanding = set(range(1, tags + 1))
        self.finished: set[int] = set()
        self.frames: list[tuple[int, bool]] = []
        self.fail = False

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        if self.fail:
            raise ConnectionError("channel closed")
        if delivery_tag not in self.outstanding:
            raise AssertionError(f"unknown delivery tag {delivery_tag}")  # RabbitMQ: PRECONDITION_FAILED
        covered = {t for t in self.outstanding if t <= delivery_tag} if multiple else {delivery_tag}
        early = covered - self.finished
        assert not early, f"acked before they finished: {sorted(early)}"
        self.outstanding -= covered
        self.frames.append((delivery_tag, multiple))


async def finish(channel: BookkeepingChannel, acks: AckCoalescer, *tags: int) -> None:
    channel.finished.update(tags)
    await asyncio.gather(*(acks.ack(t) for t in tags))


async def test_a_burst_in_order_is_one_frame():
    channel = BookkeepingChannel(5)
    acks = AckCoalescer(channel)
    await finish(channel, acks, 1, 2, 3, 4, 5)
    assert channel.frames == [(5, True)] and not channel.outstanding


async def test_a_running_job_breaks_the_run_and_later_ones_are_acked_alone():
    channel = BookkeepingChannel(5)
    acks = AckCoalescer(channel)
    await finish(channel, acks, 1, 2, 4, 5)  # 3 still runs
    assert channel.frames == [(2, True), (4, False), (5, False)]
    assert channel.outstanding == {3}
    await finish(channel, acks, 3)
    assert channel.frames[-1] == (3, False) and not channel.outstanding
    assert acks.floor == 5


async def test_a_rejected_delivery_does_not_stop_the_run():
    channel = BookkeepingChannel(4)
    acks = AckCoalescer(channel)
    channel.outstanding.discard(2)  # rejected (requeued) by the worker
    acks.settled_elsewhere(2)
    await finish(channel, acks, 1, 3, 4)
    assert channel.frames == [(4, True)] and not channel.outstanding


async def test_a_failed_frame_fails_every_ack_it_carried():
    channel = BookkeepingChannel(3)
    channel.fail = True
    acks = AckCoalescer(channel)
    channel.finished.update({1, 2, 3})
    results = await asyncio.gather(*(acks.ack(t) for t in (1, 2, 3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


@pytest.mark.parametrize("seed", range(20))
async def test_random_finishing_order_never_acks_early_and_settles_all(seed):
    rng = random.Random(seed)
    tags = 300
    channel = BookkeepingChannel(tags)
    acks = AckCoalescer(channel)
    order = list(range(1, tags + 1))
    rng.shuffle(order)
    rejected = set(rng.sample(order, 15))
    while order:  # a few jobs finish in each turn of the loop, in random order
        turn = order[: rng.randint(1, 12)]
        order = order[len(turn) :]
        waits = []
        for tag in turn:
            if tag in rejected:
                channel.outstanding.discard(tag)
                acks.settled_elsewhere(tag)
            else:
                channel.finished.add(tag)
                waits.append(acks.ack(tag))
        await asyncio.gather(*waits)
    assert not channel.outstanding
    assert len(channel.frames) < tags - len(rejected)  # some acks were coalesced
