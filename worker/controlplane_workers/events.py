"""Group commit for the results stream: many events, one confirmed stream message.

While one batch is on its way to the broker, new events queue up and leave together as the next
batch. An idle system sends each event alone at once; a busy one sends fewer, larger messages, so
the broker writes and every reader parses one message per batch instead of one per job. Each
caller still returns only once the batch holding its event was confirmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson

from .broker import Broker
from .broker.base import KIND

BATCH = "batch"  # KIND of a stream message whose body is a JSON array of events
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
    def __init__(self, broker: Broker, *, max_batch: int = MAX_BATCH, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.broker = broker
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._in_flight = 0
        self.batches = 0
        self.events = 0

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

    def _send_next(self) -> None:
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if batch:
            self._in_flight += 1
            asyncio.ensure_future(self._send(batch))

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        try:
            body = b"[" + b",".join(event for event, _ in batch) + b"]"
            await self.broker.publish_events([(body, {KIND: BATCH})])
        except BaseException as exc:  # every waiter learns the batch failed
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
        else:
            self.batches += 1
            self.events += len(batch)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
        finally:
            self._in_flight -= 1
            if self._pending and self._in_flight < self.max_in_flight:
                self._send_next()
