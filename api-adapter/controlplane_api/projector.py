"""`cpw indexer`: follows provider.results and writes each job's state into PostgreSQL.

Exactly-once in effect: each transaction upserts a batch's rows *and* the stream offset of its last
message (`cpw_projector`), so after a crash the projector resumes after the offset stored, and a message
delivered again (a stream consumer restarts at a chunk's start) is skipped by its offset. One projector
is active at a time: it holds a session advisory lock on the one connection it writes with, so the
lock and the writes go together; a standby polls for the lock and takes over once the holder's
connection is gone (PostgreSQL frees the lock with it). The active one also keeps the daily
partitions (pgpartitions.py): made ahead, dropped past CPW_OPERATION_RETENTION, every UPKEEP_EVERY.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from controlplane_workers.broker import open_broker
from controlplane_workers.broker.base import Broker, StreamMessage
from controlplane_workers.lifecycle import connect_with_backoff
from controlplane_workers.records import MALFORMED, read_message
from controlplane_workers.redact import redact_text
from controlplane_workers.topology import Topology

from .pgpartitions import partition_name, upkeep
from .pgschema import CHANNEL, LOCK_KEY, migrate
from .projection import UPSERT, BatchFold
from .settings import ApiSettings

log = logging.getLogger("controlplane_api.projector")
NOTIFY_IDS = 200  # job ids per NOTIFY payload (PostgreSQL caps one at 8,000 bytes)
UPKEEP_EVERY = 600.0  # seconds between partition upkeeps (a day's partition is made 2 days ahead)


class Projector:
    """One projector process: standby until it holds the lock, then follows and writes."""

    def __init__(
        self, settings: ApiSettings, *, standby_poll: float = 0.5, clock: Callable[[], float] = time.time
    ) -> None:
        if not settings.postgres_url:
            raise ValueError("CPW_POSTGRES_URL (or CPW_POSTGRES_URL_FILE) is not set")
        self.settings = settings
        self.dsn = settings.postgres_url
        self.stream = settings.results_stream
        self.max_messages = settings.indexer_batch_messages
        self.standby_poll = standby_poll
        self.pending: list[StreamMessage] = []
        self.arrived = asyncio.Event()
        self.applied = -1  # the last stream offset written
        self.events = self.malformed = self.transactions = 0
        self.clock = clock  # the wall clock of the partition upkeep (tests pass another day's)
        self.next_upkeep = 0.0  # time.monotonic() of the next one

    def _received(self, messages: Sequence[StreamMessage]) -> None:
        self.pending.extend(messages)
        self.arrived.set()

    async def _lead(self, conn: Any, stop: asyncio.Event) -> bool:
        """Wait for the advisory lock; False if asked to stop first."""
        waiting = False
        while not stop.is_set():
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                log.warning("indexer: active (holds the lock)")
                return True
            if not waiting:
                log.warning("indexer: standby: another projector holds the lock")
                waiting = True
            try:
                await asyncio.wait_for(stop.wait(), self.standby_poll)
            except TimeoutError:
                pass
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`; raises when PostgreSQL goes away (the process exits and is restarted)."""
        name = f"cpw-indexer {self.settings.worker_id}"
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": name})
        try:
            await migrate(conn)
            if not await self._lead(conn, stop):
                return
            await conn.execute(
                "INSERT INTO cpw_projector (stream, last_offset) VALUES ($1, -1) ON CONFLICT DO NOTHING", self.stream
            )
            self.applied = await conn.fetchval("SELECT last_offset FROM cpw_projector WHERE stream = $1", self.stream)
            log.warning("indexer: resuming %s after offset %d", self.stream, self.applied)
            broker = open_broker(self.settings.rabbitmq_url, Topology.from_settings(self.settings), name=name)
            if not await connect_with_backoff(broker.connect, "indexer", stop):
                return
            try:
                await self._follow(broker, conn, stop)
            finally:
                await broker.close()
        finally:
            await conn.close()

    async def _follow(self, broker: Broker, conn: Any, stop: asyncio.Event) -> None:
        subscription = await broker.follow(self.stream, self._received, self.applied + 1)
        stopping = asyncio.ensure_future(stop.wait())
        conn.add_termination_listener(lambda _: self.arrived.set())  # wake up to notice, even when idle
        try:
            while not stop.is_set():
                if conn.is_closed():  # the lock went with it: a standby may be active already
                    raise ConnectionError("lost the PostgreSQL connection, and the projector lock with it")
                if time.monotonic() >= self.next_upkeep:
                    await self.upkeep(conn)
                if not self.pending:
                    self.arrived.clear()
                    arrived = asyncio.ensure_future(self.arrived.wait())
                    until_upkeep = max(0.0, self.next_upkeep - time.monotonic())
                    await asyncio.wait({arrived, stopping}, timeout=until_upkeep, return_when=asyncio.FIRST_COMPLETED)
                    arrived.cancel()
                    continue
                batch, self.pending = self.pending[: self.max_messages], self.pending[self.max_messages :]
                await self.apply(conn, batch)
        finally:
            stopping.cancel()
            await subscription.cancel()

    async def upkeep(self, conn: Any) -> None:
        """Partitions ahead, expired days dropped; a lock held too long by readers is tried next time."""
        self.next_upkeep = time.monotonic() + UPKEEP_EVERY
        try:
            made, dropped = await upkeep(conn, self.clock(), self.settings.operation_retention)
        except asyncpg.LockNotAvailableError as exc:
            log.warning("indexer: partition upkeep postponed: %s", exc)
            return
        if made or dropped:
            names = [partition_name(day) for day in made], [partition_name(day) for day in dropped]
            log.warning("indexer: partitions made %s, dropped %s (past the retention)", *names)

    async def apply(self, conn: Any, messages: Sequence[StreamMessage]) -> None:
        """One transaction: the rows of `messages` not applied yet, and the offset of the last one."""
        fold, events, malformed, last = BatchFold(), 0, 0, self.applied
        for message in messages:
            if message.offset <= self.applied:  # delivered again after a resubscribe: applied already
                continue
            last = message.offset
            try:
                events += read_message(message, fold)
            except MALFORMED:
                malformed += 1
        if last == self.applied:
            return
        async with conn.transaction():
            if fold.changes:
                await conn.execute(UPSERT, *fold.columns())
            await conn.execute(
                "UPDATE cpw_projector SET last_offset = $2, events = events + $3, malformed = malformed + $4, "
                "updated_at = now() WHERE stream = $1",
                self.stream,
                last,
                events,
                malformed,
            )
            for start in range(0, len(fold.ended), NOTIFY_IDS):
                await conn.execute(
                    "SELECT pg_notify($1, $2)", CHANNEL, ",".join(fold.ended[start : start + NOTIFY_IDS])
                )
        self.applied = last
        self.events += events
        self.malformed += malformed
        self.transactions += 1


def run_indexer(settings: ApiSettings) -> int:
    """`cpw indexer`: 0 once stopped by a signal, 1 when PostgreSQL or the broker failed it."""
    import uvloop

    from controlplane_workers.lifecycle import install_stop_handlers

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        projector = Projector(settings)
        started = time.monotonic()
        await projector.run(stop)
        elapsed = time.monotonic() - started
        log.warning(
            "indexer: stopped: %d events in %d transactions, %.1fs", projector.events, projector.transactions, elapsed
        )

    try:
        uvloop.run(main())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.error("indexer: %s: %s", type(exc).__name__, redact_text(str(exc)))
        return 1
    return 0
