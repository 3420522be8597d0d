"""The API's status index: the core's StatusIndex plus what only the API needs.

- jobs in flight per tenant, for the per-tenant queue cap (`CPW_API_TENANT_MAX_QUEUED`), plus the
  slots reserved by submissions still being published (so concurrent ones cannot overshoot the cap);
- the idempotency keys of Accepted records, so every replica, and a restarted one after its
  rebuild, answers a retried submission with the job the first one made;
- this process's own start marker: the replica is ready once it has read it back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from controlplane_workers.broker.base import Headers
from controlplane_workers.models import Job
from controlplane_workers.status import Entry, Key, StatusIndex

from . import metrics
from .slots import Reservations

MARKER_ID = "x-cpw-marker"


class ApiIndex(StatusIndex):
    """StatusIndex + per-tenant counts in flight + idempotency keys + the start marker."""

    def __init__(self, max_jobs: int, max_bytes: int | None = None, max_age: float | None = None) -> None:
        super().__init__(max_jobs, max_bytes, max_age)
        self.active: dict[str | None, int] = {}
        self.reserved = Reservations()  # submissions being published: counted until their record lands here
        # hashed key -> (job id, request fingerprint, submitted at); bounded like the jobs.
        self.idempotency: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self.marker: str | None = None
        self.marker_seen = False
        self.on_marker: list[Callable[[], object]] = []

    def active_count(self, tenant: str | None) -> int:
        """Jobs of `tenant` that are Accepted or Running, or reserved and being published."""
        return self.active.get(tenant, 0) + self.reserved.of(tenant)

    def reserve(self, tenant: str | None, job_id: str, cap: int) -> bool:
        """Take a slot for `job_id` if `tenant` is under `cap`. No await between check and take, so
        concurrent submissions on this event loop cannot all pass the check."""
        if self.active_count(tenant) >= cap:
            return False
        self.reserved.take(job_id, tenant)
        return True

    def release(self, job_id: str) -> None:
        """Give back `job_id`'s slot (publish failed, or its record now counts it); idempotent."""
        self.reserved.release(job_id)

    def _insert(self, job_id: str, key: Key, entry: Entry) -> None:
        self.release(job_id)  # counted from now on as the record itself: not twice
        super()._insert(job_id, key, entry)

    def idempotent(self, key: str) -> tuple[str, str, float] | None:
        """(job id, request fingerprint, submitted at) of the job last submitted with `key`."""
        return self.idempotency.get(key)

    def _count(self, entry: Entry, delta: int) -> None:
        if not entry.terminal:
            self.active[entry.tenant] = self.active.get(entry.tenant, 0) + delta

    def _evicted_one(self) -> None:
        metrics.INDEX_EVICTIONS.inc()

    def remember_key(self, key: str, job_id: str, fingerprint: str, at: float) -> None:
        # The latest submission with a key counts: a key reused after its window made a new job.
        self.idempotency.pop(key, None)
        self.idempotency[key] = (job_id, fingerprint, at)
        while len(self.idempotency) > self.max_jobs:
            self.idempotency.popitem(last=False)

    def read_marker(self, headers: Headers) -> None:
        if headers.get(MARKER_ID) == self.marker:
            self.marker_seen = True
            for callback in self.on_marker:
                callback()


class Unindexed(ApiIndex):
    """The queue's index when PostgreSQL is the store (pgstore.py): keeps nothing, the store has the row."""

    def accept(self, job: Job) -> None:
        pass
