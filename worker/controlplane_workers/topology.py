"""The names and arguments of every exchange, queue and stream, in one place.

Every process declares the same topology idempotently, so whichever starts first creates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # settings.py reads the cascade's capacity from here
    from .settings import Settings

MAX_PRIORITY = 10
# The delay cascade (delayed jobs): level k holds a job 2**k ms, so DELAY_LEVELS levels hold any delay up to
# 2**DELAY_LEVELS - 1 ms (~12.4 days). A constant, not a setting: every process binds the same routing-key
# patterns, and a key with another number of digits would match none of them.
DELAY_LEVELS = 30
MAX_CASCADE_DELAY = (2**DELAY_LEVELS - 1) / 1000  # seconds


@dataclass(frozen=True)
class Topology:
    exchange: str = "provider.exchange"
    jobs_queue: str = "provider.jobs"
    results_stream: str = "provider.results"
    control_stream: str = "provider.control"
    heartbeat_exchange: str = "provider.heartbeats"
    queue_type: str = "classic"
    max_attempts: int = 5
    results_max_age: str = "24h"
    results_max_bytes: int = 2_000_000_000
    accepted_on_stream: bool = True
    delivery_limit: int = 20
    dlq_max_length: int = 10_000
    dlq_max_age: int = 7 * 24 * 3600
    dlq_overflow: str = "drop-head"
    stream_replicas: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            exchange=settings.exchange,
            jobs_queue=settings.jobs_queue,
            results_stream=settings.results_stream,
            control_stream=settings.control_stream,
            heartbeat_exchange=settings.heartbeat_exchange,
            queue_type=settings.queue_type,
            max_attempts=settings.max_attempts,
            results_max_age=settings.results_max_age,
            results_max_bytes=settings.results_max_bytes,
            accepted_on_stream=settings.accepted_on_stream,
            delivery_limit=settings.queue_delivery_limit,
            dlq_max_length=settings.dlq_max_length,
            dlq_max_age=settings.dlq_max_age,
            dlq_overflow=settings.dlq_overflow,
            stream_replicas=settings.stream_replicas,
        )

    @property
    def dead_letter_exchange(self) -> str:
        return self.exchange.rsplit(".", 1)[0] + ".dlx" if "." in self.exchange else f"{self.exchange}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.jobs_queue}.dlq"

    def retry_queue(self, attempt: int) -> str:
        """The delay queue a job waits in before attempt `attempt` (2..max_attempts)."""
        return f"{self.jobs_queue}.retry.{attempt}"

    @property
    def retry_attempts(self) -> range:
        return range(2, self.max_attempts + 1)

    # -- the delay cascade: a job's delay in ms, written in binary into its routing key, most significant
    # digit first. Level k's exchange routes a key whose digit k is 1 to its queue (fixed TTL 2**k ms) and
    # one whose digit is 0 straight on to level k-1's exchange; the queue dead-letters to that exchange
    # too, keeping the key. Level 0 ends in a fanout exchange bound to the job queue. Fixed per-queue TTLs
    # expire in arrival order, so no job waits behind a longer one (a per-message TTL in one queue would).
    def delay_exchange(self, level: int) -> str:
        """Level `level`'s exchange; -1 is the delivery exchange in front of the job queue."""
        return f"{self.jobs_queue}.delay.deliver" if level < 0 else f"{self.jobs_queue}.delay.{level}"

    def delay_queue(self, level: int) -> str:
        return f"{self.jobs_queue}.delay.{level}"

    @property
    def delay_entry(self) -> str:
        """Where a delayed job is published: bound ("#") to the highest level's exchange, and declared last,
        so its existence says the whole cascade was declared."""
        return f"{self.jobs_queue}.delay"

    @staticmethod
    def delay_routing_key(delay_ms: int) -> str:
        """'d29.d28....d0', the binary digits of the delay in ms (0 <= delay_ms < 2**DELAY_LEVELS)."""
        if not 0 <= delay_ms < 2**DELAY_LEVELS:
            raise ValueError(f"a delay of {delay_ms} ms is more than the cascade holds")
        return ".".join(format(delay_ms, f"0{DELAY_LEVELS}b"))

    @staticmethod
    def delay_pattern(level: int, digit: str) -> str:
        """The binding pattern of level `level`'s exchange that matches keys whose digit `level` is `digit`."""
        return "*." * (DELAY_LEVELS - 1 - level) + digit + ".#"

    def delay_queue_arguments(self, level: int) -> dict[str, Any]:
        return {"x-message-ttl": 2**level, "x-dead-letter-exchange": self.delay_exchange(level - 1)}

    def jobs_queue_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": self.dead_letter_queue,
        }
        if self.queue_type == "quorum":
            # Quorum queues have no priorities before RabbitMQ 3.13 (two levels since). The broker counts
            # deliveries (x-delivery-count): a worker dead-letters a job's delivery at the limit itself, with
            # its terminal event (worker.py); the broker's own dead-lettering past it is the backstop.
            args["x-queue-type"] = "quorum"
            args["x-delivery-limit"] = self.delivery_limit
        else:
            args["x-max-priority"] = MAX_PRIORITY
        return args

    @property
    def side_queue_type(self) -> str:
        """The type of the DLQ and the delay queues: the job queue's. Beside a quorum job queue a classic
        delay queue or DLQ lost its messages with its node and stalled the workers while it was away
        (the cluster drills, docs/reliability.md)."""
        return self.queue_type

    def dead_letter_queue_arguments(self, queue_type: str | None = None) -> dict[str, Any]:
        """The DLQ's bound: a job body can be 1 MiB and any failure may end here, so an unbounded DLQ would
        let a broken provider (or a flood of poison) fill the broker's disk. At the bound the broker drops
        the oldest dead letter (drop-head) or refuses the new one (reject-publish); past the age, it drops.
        `queue_type`: the arguments of that type (default: `side_queue_type`), for a queue made by an
        earlier release."""
        args: dict[str, Any] = {
            "x-max-length": self.dlq_max_length,
            "x-message-ttl": self.dlq_max_age * 1000,
            "x-overflow": self.dlq_overflow,
        }
        if (queue_type or self.side_queue_type) == "quorum":
            args["x-queue-type"] = "quorum"
        return args

    def retry_queue_arguments(self, queue_type: str | None = None) -> dict[str, Any]:
        """A worker moves a retry back to the job queue when it is due (broker/retries.py), straight, not
        through the exchange, so a retry is not copied onto the results stream a second time as a new
        Accepted event. The dead-letter arguments stay as earlier releases declared them (RabbitMQ refuses
        a redeclaration with other ones): they move the retries of a release that set an expiration on
        them (per-message TTL; between quorum queues at least once, which needs `reject-publish`)."""
        args: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.jobs_queue}
        if (queue_type or self.side_queue_type) == "quorum":
            args["x-queue-type"] = "quorum"
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
        return args

    @property
    def side_queues(self) -> list[str]:
        """The DLQ and the delay queues: declared with the job queue's type (`side_queue_type`)."""
        return [self.dead_letter_queue, *(self.retry_queue(a) for a in self.retry_attempts)]

    def side_queue_arguments(self, name: str, queue_type: str | None = None) -> dict[str, Any]:
        if name == self.dead_letter_queue:
            return self.dead_letter_queue_arguments(queue_type)
        return self.retry_queue_arguments(queue_type)

    def stream_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-queue-type": "stream",
            "x-max-age": self.results_max_age,
            "x-max-length-bytes": self.results_max_bytes,
        }
        if self.stream_replicas:
            # Only when asked: RabbitMQ compares it on every redeclaration, so a stream created without
            # it (every release before the setting) would refuse the declaration.
            args["x-initial-cluster-size"] = self.stream_replicas
        return args
