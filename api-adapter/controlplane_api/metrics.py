"""The API adapter's Prometheus metrics. Dashboards and alerts are written against these names.

Children are cached per label set, so the request path pays one dict lookup per metric.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REJECTION_REASONS = (
    "unauthorized",
    "too_large",
    "rate_limited",
    "broker_unavailable",
    "invalid",
    "not_found",
    "conflict",
    "sync_timeout",
    "tenant_rate",
)

REQUESTS = Counter(
    "cpw_api_requests",
    "HTTP requests answered, by route template, method and status code.",
    ("route", "method", "code"),
)
REQUEST_DURATION = Histogram(
    "cpw_api_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ("route", "method"),
    buckets=REQUEST_BUCKETS,
)
SUBMISSIONS = Counter(
    "cpw_api_submissions",
    "Jobs accepted (confirmed by the broker), by operation and priority.",
    ("operation", "priority"),
)
REJECTIONS = Counter("cpw_api_rejections", "Requests refused, by reason.", ("reason",))
INDEX_JOBS = Gauge("cpw_api_index_jobs", "Jobs held in this process's status index.")
INDEX_BYTES = Gauge("cpw_api_index_bytes", "Estimated bytes the jobs of this process's status index hold.")
INDEX_MAX_BYTES = Gauge(
    "cpw_api_index_max_bytes", "The status index's byte bound (CPW_API_INDEX_MAX_BYTES); 0 when it has none."
)
INDEX_EVICTIONS = Counter(
    "cpw_api_index_evictions",
    "Finished jobs evicted from the status index to stay within its bounds; they answer 404 OperationExpired.",
)
INDEX_LAG = Gauge("cpw_api_index_lag_seconds", "Seconds since the time of the last event applied to the status index.")
TOKEN_RELOAD_FAILURES = Counter(
    "cpw_api_token_reload_failures",
    "Times the tokens file had changed but could not be used; the previous tokens stayed in force.",
)
TENANT_RATE_LIMITED = Counter(
    "cpw_api_tenant_rate_limited",
    "Submissions refused by the per-tenant rate limit (CPW_API_TENANT_RATE), by tenant. Tenants come from the "
    "tokens file, so the label's values are as many as its tenants.",
    ("tenant",),
)
READY = Gauge("cpw_api_ready", "1 while this API process is connected and its index is rebuilt.")
STORE = Gauge(
    "cpw_api_operation_store",
    "1 for the operation store this process answers from (CPW_API_STORE): with `postgresql`, a projector must run.",
    ("store",),
)

for _reason in REJECTION_REASONS:  # every reason exists from the start, so rate() sees the first one
    REJECTIONS.labels(_reason)

_requests: dict[tuple[str, str, int], Counter] = {}
_durations: dict[tuple[str, str], Histogram] = {}
_submissions: dict[tuple[str, int], Counter] = {}


def observe_request(route: str, method: str, code: int, seconds: float) -> None:
    key = (route, method, code)
    counter = _requests.get(key)
    if counter is None:
        counter = _requests[key] = REQUESTS.labels(route, method, str(code))
    counter.inc()
    dkey = (route, method)
    histogram = _durations.get(dkey)
    if histogram is None:
        histogram = _durations[dkey] = REQUEST_DURATION.labels(route, method)
    histogram.observe(seconds)


def count_submission(operation: str, priority: int) -> None:
    key = (operation, priority)
    counter = _submissions.get(key)
    if counter is None:
        counter = _submissions[key] = SUBMISSIONS.labels(operation, str(priority))
    counter.inc()


def count_rate_limited(tenant: str | None) -> None:
    TENANT_RATE_LIMITED.labels(tenant or "").inc()


def count_rejection(reason: str) -> None:
    REJECTIONS.labels(reason).inc()
