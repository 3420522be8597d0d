"""`cpw indexer`: follows provider.results and writes each job's state into PostgreSQL.

Exactly-once in effect: each transaction upserts a batch's rows *and* the stream offset of its last
message (`cpw_projector`), so after a crash the projector resumes after the offset stored, and a message
delivered again (a stream consumer restarts at a chunk's start) is skipped by its offset. One projector
is active at a time: it holds a session advisory lock on the one connection it writes with, so the
lock and the writes go together; a standby polls for the lock and takes over once the holder's
connection is gone (PostgreSQL frees the lock with it). The active one also keeps the daily
partitions (pgpartitions.py `Upkeep`): made ahead, dropped past CPW_OPERATION_RETENTION.

Bounded: the stream is followed with a window of CPW_INDEXER_BACKLOG_MESSAGES, each message released after the
transaction that wrote it committed, so while PostgreSQL is slow or blocked RabbitMQ stops delivering once the
projector holds that many (`backlog`); the rest wait in the stream, not in this process's memory.

Ready (`Projector.ready`, the ops port's /health/ready: indexer.py) means "a sound member of the pair": the
active one once it follows the stream, a standby while its PostgreSQL connection is open and it waits for the
lock. A standby is Ready so that rollouts and PodDisruptionBudgets count it; which one leads is
`cpw_projector_leader`, and the alert CPWProjectorNoLeader watches that one does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from controlplane_workers.broker import open_broker
from controlplane_workers.broker.base import Broker, StreamMessage
from controlplane_workers.lifecycle import connect_with_backoff
from controlplane_workers.records import MALFORMED, read_message
from controlplane_workers.topology import Topology

from . import projector_metrics as metrics
from .pgpartitions import Upkeep
from .pgschema import CHANNEL, LOCK_KEY, migrate
from .projection import UPSERT, BatchFold
from .settings import ApiSettings

log = logging.getLogger("controlplane_api.projector")
NOTIFY_IDS = 200  # job ids per NOTIFY payload (PostgreSQL caps one at 8,000 bytes)
LOST = "lost the PostgreSQL connection, and the projector lock with it"


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
        self.max_backlog = settings.indexer_backlog_messages
        self.backlog = 0  # messages received and not yet committed (pending + the batch being written)
        self.standby_poll = standby_poll
        self.pending: list[StreamMessage] = []
        self.arrivals: deque[list[float]] = deque()  # [monotonic time, messages] per delivery still pending
        self.arrived = asyncio.Event()
        self.applied = -1  # the last stream offset written
        self.events = self.malformed = self.transactions = 0
        self.partitions = Upkeep(settings.operation_retention, clock)  # the leader's, while it follows
        self.role = "starting"  # then "standby" and/or "leader"
        self.following = False
        self.conn: Any = None
        metrics.LAG.set_function(self.lag)
        metrics.LEADER.set_function(lambda: 1.0 if self.role == "leader" else 0.0)
        metrics.POSTGRES_CONNECTED.set_function(lambda: 1.0 if self._connected() else 0.0)
        metrics.APPLIED_OFFSET.set_function(lambda: float(self.applied))
        metrics.BACKLOG.set_function(lambda: float(self.backlog))

    def _connected(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    @property
    def ready(self) -> bool:
        """The active projector once it follows the stream; a standby while it can take over."""
        return self._connected() and (self.role == "standby" or (self.role == "leader" and self.following))

    def lag(self) -> float:
        """Seconds the oldest message received but not committed has waited (0 when none waits)."""
        return time.monotonic() - self.arrivals[0][0] if self.arrivals and self.role == "leader" else 0.0

    def status(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "ready": self.ready,
            "stream": self.stream,
            "applied_offset": self.applied,
            "pending_messages": len(self.pending),
            "backlog_messages": self.backlog,
            "backlog_limit": self.max_backlog,
            "lag_seconds": round(self.lag(), 3),
            "events": self.events,
            "transactions": self.transactions,
            "malformed": self.malformed,
            "upkeep_failures": self.partitions.failures,
        }

    def _received(self, messages: Sequence[StreamMessage]) -> None:
        if messages:
            self.pending.extend(messages)
            self.backlog += len(messages)
            self.arrivals.append([time.monotonic(), len(messages)])
            self.arrived.set()

    def _taken(self, count: int) -> None:
        """`count` pending messages were committed: drop their arrival times."""
        self.backlog -= count
        while count and self.arrivals:
            first = self.arrivals[0]
            if first[1] <= count:
                count -= int(first[1])
                self.arrivals.popleft()
            else:
                first[1] -= count
                count = 0

    async def _lead(self, conn: Any, stop: asyncio.Event) -> bool:
        """Wait for the advisory lock; False if asked to stop first."""
        waiting = False
        while not stop.is_set():
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                log.warning("indexer: active (holds the lock)")
                if waiting:
                    metrics.FAILOVERS.inc()
                self.role = "leader"
                return True
            if not waiting:
                log.warning("indexer: standby: another projector holds the lock")
                waiting = True
                self.role = "standby"
            try:
                await asyncio.wait_for(stop.wait(), self.standby_poll)
            except TimeoutError:
                pass
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`; raises when PostgreSQL goes away (the process exits and is restarted)."""
        name = f"cpw-indexer {self.settings.worker_id}"
        conn = self.conn = await asyncpg.connect(self.dsn, server_settings={"application_name": name})
        try:
            await migrate(conn)
            if not await self._lead(conn, stop):
                return
            await conn.execute(
                "INSERT INTO cpw_projector (stream, last_offset) VALUES ($1, -1) ON CONFLICT DO NOTHING", self.stream
            )
            self.applied = await conn.fetchval("SELECT last_offset FROM cpw_projector WHERE stream = $1", self.stream)
            log.warning("indexer: resuming %s after offset %d", self.stream, self.applied)
            topology = Topology.from_settings(self.settings)
            broker = open_broker(
                self.settings.rabbitmq_url, topology, name=name, publish_timeout=self.settings.publish_timeout
            )
            if not await connect_with_backoff(broker.connect, "indexer", stop):
                return
            try:
                await self._follow(broker, conn, stop)
            finally:
                await broker.close()
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if conn.is_closed():  # cut mid-query: say what it means, wherever it happened
                raise ConnectionError(LOST) from exc
            raise
        finally:
            self.role, self.following = "starting", False
            await conn.close()

    async def _follow(self, broker: Broker, conn: Any, stop: asyncio.Event) -> None:
        subscription = await broker.follow(self.stream, self._received, self.applied + 1, window=self.max_backlog)
        self.following = True
        stopping = asyncio.ensure_future(stop.wait())
        conn.add_termination_listener(lambda _: self.arrived.set())  # wake up to notice, even when idle
        try:
            while not stop.is_set():
                if conn.is_closed():  # the lock went with it: a standby may be active already
                    raise ConnectionError(LOST)
                if self.partitions.due() and not await self.partitions.run(conn):
                    metrics.UPKEEP_FAILURES.inc()  # logged by it; the jobs are written all the same
                if not self.pending:
                    self.arrived.clear()
                    arrived = asyncio.ensure_future(self.arrived.wait())
                    timeout = self.partitions.wait()
                    await asyncio.wait({arrived, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    arrived.cancel()
                    continue
                batch, self.pending = self.pending[: self.max_messages], self.pending[self.max_messages :]
                await self.apply(conn, batch)
                self._taken(len(batch))
                subscription.release(batch[-1].offset)  # committed: RabbitMQ may deliver as many more
        finally:
            stopping.cancel()
            await subscription.cancel()

    async def apply(self, conn: Any, messages: Sequence[StreamMessage]) -> None:
        """One transaction: the rows of `messages` not applied yet, and the offset of the last one."""
        fold, events, malformed, last = BatchFold(), 0, 0, self.applied
        for message in messages:
            if message.offset <= last:  # delivered again (after a resubscribe): applied already
                continue
            last = message.offset
            try:
                events += read_message(message, fold)
            except MALFORMED:
                malformed += 1
        if last == self.applied:
            return
        began = time.monotonic()
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
        committed = time.monotonic()
        self.applied = last
        self.events += events
        self.malformed += malformed
        self.transactions += 1
        metrics.EVENTS.inc(events)
        metrics.MALFORMED.inc(malformed)
        metrics.TRANSACTIONS.inc()
        metrics.BATCH_MESSAGES.observe(len(messages))
        metrics.BATCH_DURATION.observe(committed - began)
        if fold.oldest is not None:
            metrics.COMMIT_DELAY.observe(max(0.0, time.time() - fold.oldest))
