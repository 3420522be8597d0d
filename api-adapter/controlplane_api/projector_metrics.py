"""`cpw indexer`'s Prometheus metrics (cpw_projector_*), documented in docs/metrics.md.

A registry of their own, served by the projector's ops port only: an API process imports this package too, and a
`cpw_projector_leader 0` from an API pod would count as a projector that leads nothing.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# A transaction carries up to CPW_INDEXER_BATCH_MESSAGES stream messages (default 256).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# From a worker's event to its row: milliseconds live, up to the stream's retention after an outage.
DELAY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)

EVENTS = Counter("cpw_projector_events", "Job events written to PostgreSQL.", registry=REGISTRY)
MALFORMED = Counter(
    "cpw_projector_malformed", "Stream messages that were no records; skipped, their offset stored.", registry=REGISTRY
)
TRANSACTIONS = Counter(
    "cpw_projector_transactions", "PostgreSQL transactions committed (rows + stream offset).", registry=REGISTRY
)
BATCH_MESSAGES = Histogram(
    "cpw_projector_batch_messages",
    "Stream messages written per transaction.",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "cpw_projector_batch_duration_seconds",
    "Time one transaction took, from BEGIN to COMMIT.",
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
COMMIT_DELAY = Histogram(
    "cpw_projector_commit_delay_seconds",
    "Per transaction: seconds from the oldest job event it holds to its commit (how late other API replicas see it).",
    buckets=DELAY_BUCKETS,
    registry=REGISTRY,
)
LAG = Gauge(
    "cpw_projector_lag_seconds",
    "Seconds the oldest stream message received and not yet committed has waited; 0 when none waits.",
    registry=REGISTRY,
)
APPLIED_OFFSET = Gauge(
    "cpw_projector_applied_offset",
    "Stream offset of the last message committed; -1 before the first.",
    registry=REGISTRY,
)
BACKLOG = Gauge(
    "cpw_projector_backlog_messages",
    "Stream messages received and not yet committed; at CPW_INDEXER_BACKLOG_MESSAGES RabbitMQ stops delivering until "
    "PostgreSQL catches up.",
    registry=REGISTRY,
)
LEADER = Gauge(
    "cpw_projector_leader", "1 while this projector holds the lock and writes; 0 on standby.", registry=REGISTRY
)
FAILOVERS = Counter(
    "cpw_projector_failovers",
    "Times this projector took the lock after standing by (the previous holder went away).",
    registry=REGISTRY,
)
POSTGRES_CONNECTED = Gauge(
    "cpw_projector_postgres_connected", "1 while the projector's PostgreSQL connection is open.", registry=REGISTRY
)
UPKEEP_FAILURES = Counter(
    "cpw_projector_upkeep_failures",
    "Partition upkeeps PostgreSQL refused (a drop that waited past its lock timeout, a partition something depends "
    "on); each is tried again 10 minutes later.",
    registry=REGISTRY,
)
