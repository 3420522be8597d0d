"""Read-your-write on the results stream: a confirmed batch counts once this process read it back.

A confirm did not prove a batch is on the stream: in a rolling restart RabbitMQ 3.10.8 confirmed about
a second of stream writes and never appended them as the stream's leader stopped gracefully
(docs/reliability.md). So with CPW_RESULTS_READBACK each batch carries an id, the process's own
follower of the stream hands what it reads to `ReadBack.read`, and a batch's callers return once it
was read back (a worker acks its job only then).

A loss is told from a slow reader by order: the stream keeps the order of one channel's publishes, so
once a batch of ours is read, every batch of ours published before it and still unread is not on the
stream, and is published again at once (same id; readers take a copy as harmless: the first terminal
event wins, a second Accepted record changes nothing). A writer with nothing more to send puts an
empty probe batch behind a batch still unread after `timeout` seconds, which decides the same way
once read. A reader that reads nothing (stalled, or behind a lagging replica) proves nothing, so
nothing is published in vain; after GIVE_UP_AFTER timeouts the batch's callers get BrokerUnavailable
(a worker then hands the job back to the queue to run again).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .broker.base import KIND, Headers, StreamMessage
from .errors import BrokerUnavailable
from .logs import Bursts

log = logging.getLogger(__name__)

BATCH = "batch"  # KIND of a stream message whose body is a JSON array of events
BATCH_ID = "x-cpw-batch-id"  # the id a batch is read back by
PROBE = b"[]"  # an empty batch: readers find no event in it
GIVE_UP_AFTER = 4  # timeouts after which an unread batch fails its callers
SENT_AGAIN_MEMORY = 10_000

Waiters = list[asyncio.Future[None]]
Publish = Callable[[bytes, Headers], Awaitable[None]]


@dataclass(eq=False)
class _Batch:
    id: str
    headers: Headers
    seq: int
    probe: bool = False
    body: bytes = b""
    waiters: Waiters = field(default_factory=list)
    confirmed: bool = False
    read: bool = False
    sending_again: bool = False
    give_up_at: float = 0.0
    timer: asyncio.TimerHandle | None = None


class ReadBack:
    def __init__(self, publish: Publish, timeout: float) -> None:
        self.publish = publish
        self.timeout = timeout
        self._unread: dict[str, _Batch] = {}  # in publish order: a batch sent again moves to the end
        self._seq = itertools.count(1)
        self._probe: _Batch | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._bursts = Bursts(log)  # one line per episode, not per batch
        self.republished = 0  # batches published again: proven missing from the stream
        self.probes = 0
        self.unread = 0  # batches given up on
        # Batches published again and then read twice: the first copy was on the stream after all, so it
        # was sent again in vain (a reader that saw the stream out of order). Ids kept: the last few thousand.
        self.read_twice = 0
        self._sent_again: OrderedDict[str, bool] = OrderedDict()

    def stamp(self, headers: Headers, *, probe: bool = False) -> _Batch:
        """Before a batch's first publish: its id into `headers`, and the batch registered (the reader
        may read it before its confirm arrives)."""
        batch = _Batch(secrets.token_hex(8), headers, next(self._seq), probe)
        headers[BATCH_ID] = batch.id
        self._unread[batch.id] = batch
        return batch

    def failed(self, batch: _Batch) -> None:
        """Its publish failed: the caller tells its waiters."""
        self._unread.pop(batch.id, None)

    def confirmed(self, batch: _Batch, body: bytes, waiters: Waiters) -> None:
        """Its publish was confirmed: `waiters` are settled once it is read back."""
        batch.body, batch.waiters, batch.confirmed = body, waiters, True
        if batch.read:
            settle(waiters, None)
            return
        loop = asyncio.get_running_loop()
        batch.give_up_at = loop.time() + GIVE_UP_AFTER * self.timeout
        batch.timer = loop.call_later(self.timeout, self._overdue, batch)

    def read(self, messages: Sequence[StreamMessage]) -> None:
        """What this process's follower of the results stream read."""
        if not self._unread and not self._sent_again:
            return
        for message in messages:
            batch_id = message.headers.get(BATCH_ID)
            if batch_id is None:
                continue
            batch = self._unread.pop(str(batch_id), None)
            if batch is None:
                self._read_again(str(batch_id))
                continue
            if batch.id in self._sent_again:
                self._sent_again[batch.id] = True
            self._done(batch, None)
            # Published before it and not read: not on the stream. Usually none (the oldest is read first).
            for earlier in self._published_before(batch.seq):
                if earlier.probe:
                    self._drop(earlier)
                elif earlier.confirmed and not earlier.sending_again:
                    self._send_again(earlier)

    def _published_before(self, seq: int) -> list[_Batch]:
        earlier = []
        for batch in self._unread.values():  # in publish order: stop at the first one after
            if batch.seq >= seq:
                break
            earlier.append(batch)
        return earlier

    def _read_again(self, batch_id: str) -> None:
        if self._sent_again.get(batch_id):  # one copy was read already
            self.read_twice += 1

    def _done(self, batch: _Batch, failure: Exception | None) -> None:
        batch.read = failure is None
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if batch.confirmed:
            settle(batch.waiters, failure)

    def _drop(self, batch: _Batch) -> None:
        self._unread.pop(batch.id, None)
        if batch.timer is not None:
            batch.timer.cancel()

    def _send_again(self, batch: _Batch) -> None:
        batch.sending_again = True
        batch.seq = next(self._seq)
        del self._unread[batch.id]
        self._unread[batch.id] = batch  # to the end: the order stays the publish order
        self.republished += 1
        self._sent_again[batch.id] = False  # True once a copy of it was read
        if len(self._sent_again) > SENT_AGAIN_MEMORY:
            self._sent_again.popitem(last=False)
        self._bursts.warning("a confirmed batch of records is missing from the results stream; publishing it again")
        self._spawn(self._publish_again(batch))

    async def _publish_again(self, batch: _Batch) -> None:
        try:
            await self.publish(batch.body, batch.headers)
        except Exception as exc:
            if self._unread.pop(batch.id, None) is not None:
                self._done(batch, exc)
        finally:
            batch.sending_again = False

    def _overdue(self, batch: _Batch) -> None:
        batch.timer = None
        if batch.id not in self._unread:
            return
        if batch.probe:  # its job was to prove something; the next overdue batch sends another
            self._drop(batch)
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= batch.give_up_at:
            self._unread.pop(batch.id, None)
            self.unread += 1
            self._done(
                batch,
                BrokerUnavailable(
                    f"a confirmed batch of records was not read back from the results stream in "
                    f"{GIVE_UP_AFTER * self.timeout:.0f}s"
                ),
            )
            return
        if self._probe is None or self._probe.id not in self._unread:
            self._send_probe()
        batch.timer = loop.call_later(self.timeout, self._overdue, batch)

    def _send_probe(self) -> None:
        headers: Headers = {KIND: BATCH}
        probe = self._probe = self.stamp(headers, probe=True)
        self.probes += 1

        async def send() -> None:
            try:
                await self.publish(PROBE, headers)
            except Exception:
                self._drop(probe)
                return
            self.confirmed(probe, PROBE, [])

        self._spawn(send())

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def settle(waiters: Waiters, failure: BaseException | None) -> None:
    """Tell each caller of a batch how it went (the batcher's confirm, or this read-back)."""
    for future in waiters:
        if future.done():
            continue
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(failure if isinstance(failure, Exception) else RuntimeError(str(failure)))
