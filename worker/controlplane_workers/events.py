"""Group commit for the results stream: many events, one confirmed stream message.

While one batch is on its way to the broker, new events queue up and leave together as the next
batch. An idle system sends each event alone at once; a busy one sends fewer, larger messages, so
the broker writes and every reader parses one message per batch instead of one per job. Each
caller still returns only once the batch holding its event was confirmed.

Read-your-write (`readback` seconds, CPW_RESULTS_READBACK): a confirm alone did not prove the batch is
on the stream. RabbitMQ 3.10.8 confirmed about a second of stream writes and never appended them when
the stream's leader stopped gracefully in a rolling restart (docs/reliability.md). With readback on,
each batch carries an id, a follower of the stream in the same process hands what it reads to `read`,
and callers return only once their batch was read back; a batch not read back in time is published
again (readers take a duplicate as harmless: the first terminal event wins, a second Accepted record
changes nothing), and after READBACK_ROUNDS publishes its callers get BrokerUnavailable.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence

import orjson

from .broker import Broker
from .broker.base import KIND, Headers, StreamMessage
from .errors import BrokerUnavailable

log = logging.getLogger(__name__)

BATCH = "batch"  # KIND of a stream message whose body is a JSON array of events
MAX_BATCH = 512
MAX_IN_FLIGHT = 1  # one batch on its way at a time: bigger batches, ~7-10% less CPU per job (docs/benchmarks.md)
BATCH_ID = "x-cpw-batch-id"  # set when readback is on: what the process's own follower looks for
READBACK_ROUNDS = 3  # publishes of one batch (the first and two more) before its callers are told it failed
WARN_EVERY = 10.0  # seconds between two warnings about republished batches: one line per episode, not per batch


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
        """`readback`: seconds to wait for each confirmed batch to be read back (0: off). The owner must
        then follow the results stream from before its first publish and hand each message to `read`."""
        self.broker = broker
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.readback = readback
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._in_flight = 0
        self._unread: dict[str, asyncio.Future[None]] = {}
        self._reading: set[asyncio.Future[None]] = set()
        self._warned_at = float("-inf")
        self.batches = 0
        self.events = 0
        self.republished = 0  # batches published again because they were not read back in time
        self.unread = 0  # batches given up on after READBACK_ROUNDS publishes

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

    def read(self, messages: Sequence[StreamMessage]) -> None:
        """What the owner's follower of the results stream read: a batch of ours is on the stream."""
        if not self._unread:
            return
        for message in messages:
            batch_id = message.headers.get(BATCH_ID)
            future = self._unread.pop(str(batch_id), None) if batch_id is not None else None
            if future is not None and not future.done():
                future.set_result(None)

    def _send_next(self) -> None:
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if batch:
            self._in_flight += 1
            asyncio.ensure_future(self._send(batch))

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        headers: Headers = {KIND: BATCH}
        read: asyncio.Future[None] | None = None
        if self.readback:
            # Registered before the publish: the follower may read the batch before its confirm arrives.
            headers[BATCH_ID] = batch_id = secrets.token_hex(8)
            read = self._unread[batch_id] = asyncio.get_running_loop().create_future()
        try:
            body = b"[" + b",".join(event for event, _ in batch) + b"]"
            await self.broker.publish_events([(body, headers)])
        except BaseException as exc:  # every waiter learns the batch failed
            if read is not None:
                self._unread.pop(headers[BATCH_ID], None)
            _settle(batch, exc)
        else:
            self.batches += 1
            self.events += len(batch)
            if read is None:
                _settle(batch, None)
            else:  # in flight no longer: the next batch goes out while this one is read back
                reading = asyncio.ensure_future(self._read_back(batch, body, headers, read))
                self._reading.add(reading)
                reading.add_done_callback(self._reading.discard)
        finally:
            self._in_flight -= 1
            if self._pending and self._in_flight < self.max_in_flight:
                self._send_next()

    async def _read_back(
        self, batch: list[tuple[bytes, asyncio.Future[None]]], body: bytes, headers: Headers, read: asyncio.Future[None]
    ) -> None:
        """Wait until the batch is read back; publish it again (same id) each time it is not in time."""
        batch_id = headers[BATCH_ID]
        failure: Exception | None = None
        try:
            for publishes in range(1, READBACK_ROUNDS + 1):
                try:
                    await asyncio.wait_for(asyncio.shield(read), self.readback)
                    break
                except TimeoutError:
                    if publishes == READBACK_ROUNDS:
                        self.unread += 1
                        raise BrokerUnavailable(
                            f"a confirmed batch of {len(batch)} records was not read back from the results "
                            f"stream after {READBACK_ROUNDS} publishes"
                        ) from None
                self._republishing(len(batch))
                await self.broker.publish_events([(body, headers)])
        except Exception as exc:
            failure = exc
        finally:
            self._unread.pop(batch_id, None)
        _settle(batch, failure)

    def _republishing(self, records: int) -> None:
        self.republished += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(
                "a confirmed batch of %d records was not read back from the results stream within %.1fs; "
                "publishing it again (%d batches so far)",
                records,
                self.readback,
                self.republished,
            )


def _settle(batch: list[tuple[bytes, asyncio.Future[None]]], failure: BaseException | None) -> None:
    for _, future in batch:
        if future.done():
            continue
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(failure if isinstance(failure, Exception) else RuntimeError(str(failure)))
