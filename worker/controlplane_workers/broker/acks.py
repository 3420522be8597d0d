"""Coalesced acks for one consuming channel: many finished jobs, one `basic.ack multiple`.

A worker finishes jobs in bursts (an event batch is confirmed and all its jobs settle in the same
turn of the loop). Acked one frame each, every job costs the broker a frame and a call into the
queue; acked together, a run of finished deliveries costs one. `basic.ack` with `multiple` acks
every outstanding delivery up to its tag, so the only safe run is one with no gap: it starts right
after the last delivery already settled and covers consecutive tags that are all finished. A
delivery still running (or one not yet handed to us) breaks the run; finished deliveries past the
gap are acked alone in the same turn, so a long job never holds other jobs' acks back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol


class AckChannel(Protocol):
    """What this needs of a channel (aiormq's Channel has it)."""

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> Awaitable[None]: ...


class AckCoalescer:
    def __init__(self, channel: AckChannel) -> None:
        self.channel = channel
        self.floor = 0  # every delivery tag <= floor is settled (tags start at 1 on a channel)
        self.finished: dict[int, asyncio.Future[None]] = {}  # to ack at the next flush
        self.settled: set[int] = set()  # settled above the floor (alone, or rejected)
        self.frames = 0  # basic.ack frames sent, for tests and the benchmark
        self.acks = 0
        self._scheduled = False

    def ack(self, tag: int) -> asyncio.Future[None]:
        """Ack `tag` in this turn's flush; the future ends when its frame was written (or failed)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.finished[tag] = future
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def settled_elsewhere(self, tag: int) -> None:
        """`tag` was settled another way (a reject): a run may pass over it."""
        self.settled.add(tag)

    def _flush(self) -> None:
        self._scheduled = False
        group: list[asyncio.Future[None]] = []
        top = self.floor  # the highest tag of the run that is acked by this flush
        tag = self.floor
        while True:
            nxt = tag + 1
            if nxt in self.finished:
                group.append(self.finished.pop(nxt))
                top = nxt
            elif nxt in self.settled:
                self.settled.discard(nxt)
            else:
                break
            tag = nxt
        self.floor = tag
        singles, self.finished = self.finished, {}
        if group:
            self._send(top, len(group) > 1, group)
        for single, future in singles.items():
            self.settled.add(single)
            self._send(single, False, [future])

    def _send(self, tag: int, multiple: bool, futures: list[asyncio.Future[None]]) -> None:
        self.frames += 1
        self.acks += len(futures)
        task = asyncio.ensure_future(self.channel.basic_ack(tag, multiple=multiple))

        def done(task: asyncio.Future[None]) -> None:
            error = None if task.cancelled() else task.exception()
            for future in futures:
                if future.done():
                    continue
                if task.cancelled():
                    future.cancel()
                elif error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(None)

        task.add_done_callback(done)
