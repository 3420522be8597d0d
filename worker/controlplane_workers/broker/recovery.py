"""Re-establishing what the broker took away without a storm: backoff with jitter, one log line per state.

During a node restart a retry loop without backoff wrote 356 warnings with full tracebacks in 2 s
(issue 22). Every loop of ours that re-establishes a connection or a stream subscription waits a
capped, jittered, doubling delay between attempts, and says only what changed: lost (and why),
retrying every N s once the delay reached its cap, recovered after T s. aio-pika's robust connection
has its own loop (a fixed interval, a warning per attempt); `RepeatFilter` keeps one line of each of
its repeated messages a minute.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import aio_pika
import aiormq
from aio_pika.exceptions import ChannelInvalidStateError
from prometheus_client import Counter

from ..errors import UnroutableJob

BASE_DELAY = 0.1
MAX_DELAY = 5.0
CONSUMER_RESTORE_TIMEOUT = 5.0

WHATS = ("connection", "stream", "retries")
CAUSES = (
    "connection-lost",
    "node-down",
    "channel-closed",
    "stream-member-starting",
    "consumer-cancelled",
    "queue-deleted",
    "timeout",
)
# In prometheus-client's default registry, like looplag's histogram: the API and the workers both
# hold broker connections, and every process's ops port serves that registry.
RECONNECTS = Counter(
    "cpw_broker_reconnects",
    "Broker connections and stream subscriptions lost and re-established, by what was lost and why.",
    ("what", "cause"),
)
for _what in WHATS:  # present at 0 from the start, so increase() sees the first one
    for _cause in (*CAUSES, "other"):
        RECONNECTS.labels(_what, _cause)


def cause_of(exc: BaseException | None) -> str:
    """A small, fixed vocabulary for the metric's label and the log line."""
    text = str(exc)
    if isinstance(exc, UnroutableJob):  # a queue we publish to and consume from is gone (deleted by hand)
        return "queue-deleted"
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity) and "down or inaccessible" in text:
        return "node-down"
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed) and "replica on the local node" in text:
        return "stream-member-starting"
    if isinstance(exc, aiormq.exceptions.ChannelClosed | aiormq.exceptions.ChannelNotFoundEntity):
        return "channel-closed"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError | aiormq.exceptions.ConnectionClosed | ChannelInvalidStateError | OSError):
        return "connection-lost"
    if isinstance(exc, aiormq.exceptions.AMQPError | RuntimeError) or exc is None:
        return "connection-lost"  # aio-pika says "connection closed" with a RuntimeError; None: closed, no reason
    return "other"


class Backoff:
    """Doubling delays from `base` to `cap`, each drawn from its upper half (equal jitter), so a fleet
    that lost the same node does not come back in lockstep."""

    def __init__(self, base: float = BASE_DELAY, cap: float = MAX_DELAY, rng: Callable[[], float] = random.random):
        self.base, self.cap, self.rng = base, cap, rng
        self.current = base

    @property
    def capped(self) -> bool:
        return self.current >= self.cap

    def next(self) -> float:
        delay = self.current * (0.5 + self.rng() / 2)
        self.current = min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.base


class Outage:
    """One subject (the connection, a stream subscription) from lost to recovered, logged per state."""

    def __init__(self, subject: str, what: str, log: logging.Logger, backoff: Backoff | None = None) -> None:
        self.subject, self.what, self.log = subject, what, log
        self.backoff = backoff or Backoff()
        self.since: float | None = None
        self._said_capped = False
        self._quiet = False

    @property
    def down(self) -> bool:
        return self.since is not None

    def lost(self, exc: BaseException | None = None, *, quiet: bool = False) -> None:
        """Start of an outage (later calls during the same outage say nothing): counted and logged once.

        `quiet`: part of a larger outage that is logged already (a stream's channel closed with its
        connection); its recovery is not logged either."""
        if self.since is not None:
            return
        self.since = time.monotonic()
        self._quiet = quiet
        if quiet:
            return
        cause = cause_of(exc)
        RECONNECTS.labels(self.what, cause).inc()
        detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        self.log.warning("%s lost (%s)%s", self.subject, cause, detail[:300])

    def delay(self, exc: BaseException | None = None) -> float:
        """The wait before the next attempt, after a failed one (no traceback: the cause was logged)."""
        self.lost(exc)
        delay = self.backoff.next()
        if self.backoff.capped and not self._said_capped and not self._quiet:
            self._said_capped = True
            self.log.warning("%s still down; retrying every %g s", self.subject, self.backoff.cap)
        return delay

    def recovered(self) -> None:
        if self.since is None:
            return
        if not self._quiet:
            self.log.warning("%s recovered after %.1f s", self.subject, time.monotonic() - self.since)
        self.since = None
        self._said_capped = False
        self.backoff.reset()


class RepeatFilter(logging.Filter):
    """Pass the first record of each message template, then one a `window` seconds: aio-pika's own
    reconnect loop warns on every attempt, once a second while a node is away."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window, self.clock = window, clock
        self.last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = self.clock()
        if now - self.last.get(key, -self.window) < self.window:
            return False
        self.last[key] = now
        return True


_AIO_PIKA_LOOPS = ("aio_pika.robust_connection", "aio_pika.tools", "aiormq.connection")
_filter = RepeatFilter()


def quiet_library_loops() -> None:
    """Install the repeat filter on aio-pika's and aiormq's reconnect-loop loggers (idempotent)."""
    for name in _AIO_PIKA_LOOPS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)


class RobustChannel(aio_pika.RobustChannel):
    """aio-pika's robust channel, whose restore of consumers the broker cancelled is bounded in time.

    aio-pika 10.2 restores them from the connection's reconnect loop, and the restore first waits for the
    channel, hence for the connection, to be ready: when the connection is lost meanwhile (a deleted vhost
    cancels every consumer, then closes the connection) it waits for a reconnect that only that same loop
    would make, for good. A vhost deleted and declared again left 2 of 5 brokers never reconnected. Past
    the bound the loop goes on, reconnects, and tries the consumers again."""

    async def _restore_consumers(self) -> bool:
        try:
            async with asyncio.timeout(CONSUMER_RESTORE_TIMEOUT):
                return await super()._restore_consumers()
        except TimeoutError:
            return True  # "retry": the loop runs again after its reconnect interval


class RobustConnection(aio_pika.RobustConnection):
    CHANNEL_CLASS = RobustChannel
