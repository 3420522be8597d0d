"""Group commit for the results stream: many events, one confirmed stream message.

While one batch is on its way to the broker, new events queue up and leave together as the next
batch. An idle system sends each event alone at once; a busy one sends fewer, larger messages, so
the broker writes and every reader parses one message per batch instead of one per job. Each
caller still returns only once the batch holding its event was confirmed.

With `readback` (CPW_RESULTS_READBACK) a confirmed batch counts once this process read it back from
the stream (readback.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson

from .broker import Broker
from .broker.base import KIND, Headers, StreamMessage
from .readback import BATCH, ReadBack, settle

__all__ = ["BATCH", "EventBatcher", "accepted_record"]

MAX_BATCH = 512
MAX_IN_FLIGHT = 1  # one batch on its way at a time: bigger batches, ~7-10% less CPU per job (docs/benchmarks.md)


def accepted_record(
    job_id: str, at: float, job_json: bytes, *, redrive: bool = False, idempotency: tuple[str, str] | None = None
) -> bytes:
    """The `accepted` event readers index a job by; `job_json` is the job message as published.

    `idempotency` is (key, request fingerprint) of a submission that came with an idempotency key,
    the key already hashed with the tenant: every reader can then answer a retry of it.
    """
    record: dict[str, object] = {"job_id": job_id, "type": "accepted", "at": at, "job": orjson.Fragment(job_json)}
    if redrive:
        record["redrive"] = True
    if idempotency is not None:
        record["idempotency"] = {"key": idempotency[0], "fingerprint": idempotency[1]}
    return orjson.dumps(record)


class EventBatcher:
    def __init__(
        self,
        broker: Broker,
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
        readback: float = 0.0,
    ) -> None:
        """`readback`: seconds before a confirmed batch not yet read back gets a probe behind it (0: off).
        The owner must then follow the results stream from before its first publish and hand each
        message to `read`."""
        self.broker = broker
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.readback = ReadBack(self._publish, readback) if readback else None
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._in_flight = 0
        self.batches = 0
        self.events = 0

    @property
    def republished(self) -> int:
        """Batches published again, as they were confirmed and missing from the stream."""
        return self.readback.republished if self.readback is not None else 0

    @property
    def read_twice(self) -> int:
        """Batches published again whose first copy was read after all (sent again in vain)."""
        return self.readback.read_twice if self.readback is not None else 0

    @property
    def unread(self) -> int:
        """Batches whose callers were told they failed: never read back."""
        return self.readback.unread if self.readback is not None else 0

    def read(self, messages: Sequence[StreamMessage]) -> None:
        if self.readback is not None:
            self.readback.read(messages)

    async def publish(self, event_json: bytes) -> None:
        """Append one event (a JSON object) to the stream; returns once the broker confirmed it."""
        await self.append(event_json)

    def append(self, event_json: bytes) -> asyncio.Future[None]:
        """Queue one event; the future is done once the broker confirmed its batch (for a caller
        that does not wait, without a task per event)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((event_json, future))
        if self._in_flight < self.max_in_flight:
            self._send_next()
        return future

    async def publish_many(self, events_json: Sequence[bytes]) -> None:
        await asyncio.gather(*(self.publish(e) for e in events_json))

    async def _publish(self, body: bytes, headers: Headers) -> None:
        await self.broker.publish_events([(body, headers)])

    def _send_next(self) -> None:
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if batch:
            self._in_flight += 1
            asyncio.ensure_future(self._send(batch))

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        headers: Headers = {KIND: BATCH}
        stamped = self.readback.stamp(headers) if self.readback is not None else None
        waiters = [future for _, future in batch]
        try:
            body = b"[" + b",".join(event for event, _ in batch) + b"]"
            await self._publish(body, headers)
        except BaseException as exc:  # every waiter learns the batch failed
            if stamped is not None:
                self.readback.failed(stamped)  # type: ignore[union-attr]
            settle(waiters, exc)
        else:
            self.batches += 1
            self.events += len(batch)
            if stamped is None:
                settle(waiters, None)
            else:  # out of flight now: the next batch goes while this one is read back
                self.readback.confirmed(stamped, body, waiters)  # type: ignore[union-attr]
        finally:
            self._in_flight -= 1
            if self._pending and self._in_flight < self.max_in_flight:
                self._send_next()
