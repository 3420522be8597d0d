"""The worker's Prometheus metrics (prometheus-client). Names are documented in docs/metrics.md.

Buckets span milliseconds to tens of minutes: control-plane jobs range from a lookup to a VM build.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from ._version import __version__

# The worker's own registry: a process that merely imports the SDK (the API adapter, a provider
# author's server) must not export worker series, or `cpw_worker_ready 0` from it would page.
# The worker's ops port serves this registry next to prometheus-client's default one.
REGISTRY = CollectorRegistry(auto_describe=True)

JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
JOB_LABELS = ("provider_namespace", "resource_type", "operation")
DEAD_LETTER_REASONS = (
    "malformed",
    "unknown-provider",
    "unknown-operation",
    "permanent-error",
    "attempts-exhausted",
    "delivery-limit",
)

BUILD_INFO = Info("cpw_build", "Version of controlplane-workers running in this process.", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})

# The seed's metrics keep their meaning: totals over the process's life, no labels.
JOBS_PROCESSED = Counter(
    "worker_jobs_processed", "Jobs this worker finished (any terminal outcome).", registry=REGISTRY
)
JOBS_FAILED = Counter("worker_jobs_failed", "Jobs this worker finished as Failed.", registry=REGISTRY)
UPTIME = Gauge("worker_uptime_seconds", "Seconds since this worker started.", registry=REGISTRY)

JOBS = Counter(
    "cpw_worker_jobs", "Job attempts finished by this worker, by outcome.", (*JOB_LABELS, "outcome"), registry=REGISTRY
)
JOB_DURATION = Histogram(
    "cpw_worker_job_duration_seconds",
    "Time the provider spent on one attempt.",
    (*JOB_LABELS, "outcome"),
    buckets=JOB_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "cpw_worker_queue_wait_seconds",
    "Time from submission to the start of the first attempt.",
    JOB_LABELS,
    buckets=JOB_BUCKETS,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("cpw_worker_jobs_in_flight", "Jobs running in this worker now.", registry=REGISTRY)
CAPACITY = Gauge("cpw_worker_capacity", "Jobs this worker runs at once (CPW_MAX_CONCURRENT_JOBS).", registry=REGISTRY)
STUCK_THREADS = Gauge(
    "cpw_worker_stuck_threads",
    "Sync provider threads still running a call whose job timed out or was canceled.",
    registry=REGISTRY,
)
RETRIES = Counter("cpw_worker_retries", "Attempts that failed and were scheduled again.", JOB_LABELS, registry=REGISTRY)
DEAD_LETTERED = Counter(
    "cpw_worker_dead_lettered", "Messages sent to the dead-letter queue, by reason.", ("reason",), registry=REGISTRY
)
DLQ_BOUNDED = Gauge(
    "cpw_worker_dlq_bounded",
    "0 when the dead-letter queue existed without the configured bound and refused it (bound it by a policy).",
    registry=REGISTRY,
)
CANCELED = Counter("cpw_worker_canceled", "Jobs canceled on request (running or queued).", registry=REGISTRY)
CANCELS_DROPPED = Counter(
    "cpw_worker_cancel_requests_dropped",
    "Cancel requests dropped past CPW_CANCEL_MEMORY, by kind: recent (queued or running jobs') or waiting "
    "(delayed jobs'; such a job is looked up on the control stream before it runs).",
    ("kind",),
    registry=REGISTRY,
)
CANCEL_LOOKUPS = Counter(
    "cpw_worker_cancel_lookups",
    "Delayed jobs whose cancel request was looked up on the control stream, by outcome: canceled, "
    "not-canceled, unknown (sent back to the delay cascade to try again).",
    ("outcome",),
    registry=REGISTRY,
)
REDELIVERED = Counter("cpw_worker_redelivered", "Deliveries flagged as redelivered by the broker.", registry=REGISTRY)
ACK_LOST = Counter(
    "cpw_worker_ack_lost", "Jobs whose ack failed on a lost channel; the broker will redeliver them.", registry=REGISTRY
)
RECONNECTS = Counter("cpw_worker_broker_reconnects", "Times the broker connection was restored.", registry=REGISTRY)
BROKER_UP = Gauge("cpw_worker_broker_connected", "1 while the worker is connected to the broker.", registry=REGISTRY)
READY = Gauge("cpw_worker_ready", "1 while the worker accepts jobs.", registry=REGISTRY)
LAST_HEARTBEAT = Gauge(
    "cpw_worker_last_heartbeat_timestamp_seconds", "Unix time of the last heartbeat sent.", registry=REGISTRY
)
STARTED = time.time()
UPTIME.set_function(lambda: time.time() - STARTED)
for _kind in ("recent", "waiting"):
    CANCELS_DROPPED.labels(_kind)
for _reason in DEAD_LETTER_REASONS:  # present at 0 from the start, so increase() sees the first one
    DEAD_LETTERED.labels(_reason)
