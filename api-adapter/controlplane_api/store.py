"""Where the API looks up operations: a small interface, and the stream-fed index behind it.

`OperationStore` is all the routes use, so another backend can be added without touching them; its
lookups are coroutines, as a database's are. `IndexStore` is the default: the process's own
`ApiIndex`, rebuilt by reading `provider.results` from its retention start; `PostgresStore`
(pgstore.py) reads what `cpw indexer` writes.

Job ids are time-ordered (`controlplane_workers.ids`), so an id that is no longer held can be told
apart: older than the retention or than the newest evicted job -> expired.
"""

from __future__ import annotations

import time
from typing import Protocol

from controlplane_workers.ids import job_id_time
from controlplane_workers.models import Job, JobResult, JobStatus
from controlplane_workers.settings import retention_seconds as retention_seconds

from .index import ApiIndex


class OperationStore(Protocol):
    """What the routes need to know about jobs."""

    ready: bool

    async def get(self, job_id: str, tenant: str | None) -> JobResult | None: ...

    def miss_code(self, job_id: str) -> str:
        """Why an id is not found: "OperationExpired" (retention or size bound) or "OperationNotFound"."""
        ...

    async def wait(self, job_id: str, timeout: float) -> JobResult | None: ...

    async def active_count(self, tenant: str | None) -> int: ...

    async def reserve(self, tenant: str | None, job_id: str, cap: int) -> bool:
        """Take a queued-job slot before publishing; False when `tenant` already holds `cap`."""
        ...

    def release(self, job_id: str) -> None:
        """Give a reserved slot back (the publish failed, or the job now counts in the index)."""
        ...

    async def accepted(self, job: Job, idempotency: tuple[str, str] | None) -> None:
        """The job was published (confirmed): make it visible to its own Location at once. Never raises."""
        ...

    async def idempotent(self, key: str) -> tuple[str, str, float] | None:
        """(job id, request fingerprint, submitted at) of the job submitted with this hashed key, by
        any replica."""
        ...

    async def page(
        self, tenant: str | None, status: JobStatus | None, limit: int, after: str | None
    ) -> tuple[list[JobResult], str | None]: ...

    async def counts(self, tenant: str | None) -> dict[str, int]: ...

    def info(self) -> dict[str, object]: ...


class IndexStore:
    """OperationStore over this process's ApiIndex, which the API's JobQueue feeds."""

    def __init__(self, max_jobs: int, retention: float, max_bytes: int | None = None) -> None:
        self.index = ApiIndex(max_jobs, max_bytes, max_age=retention)
        self.retention = retention
        self.ready = False

    async def get(self, job_id: str, tenant: str | None) -> JobResult | None:
        return self.index.get_for(job_id, tenant)

    def miss_code(self, job_id: str) -> str:
        made = job_id_time(job_id)
        if made is None or made > time.time() + 60:
            return "OperationNotFound"
        evicted = self.index.evicted_before
        if made < time.time() - self.retention or (evicted is not None and made <= evicted):
            return "OperationExpired"
        return "OperationNotFound"

    async def wait(self, job_id: str, timeout: float) -> JobResult | None:
        return await self.index.wait(job_id, timeout)

    async def idempotent(self, key: str) -> tuple[str, str, float] | None:
        return self.index.idempotent(key)

    async def active_count(self, tenant: str | None) -> int:
        return self.index.active_count(tenant)

    async def reserve(self, tenant: str | None, job_id: str, cap: int) -> bool:
        return self.index.reserve(tenant, job_id, cap)

    def release(self, job_id: str) -> None:
        self.index.release(job_id)

    async def accepted(self, job: Job, idempotency: tuple[str, str] | None) -> None:
        pass  # the queue recorded it in this process's index already (JobQueue.submit_encoded)

    async def page(
        self, tenant: str | None, status: JobStatus | None, limit: int, after: str | None
    ) -> tuple[list[JobResult], str | None]:
        return self.index.list_jobs(status=status, tenant=tenant, limit=limit, after=after)

    async def counts(self, tenant: str | None) -> dict[str, int]:
        return self.index.counts(tenant)

    def info(self) -> dict[str, object]:
        index = self.index
        return {
            "jobs": len(index),
            "events": index.events,
            "duplicates": index.duplicates,
            "evicted": index.evicted,
            "expired": index.expired,
            "malformed": index.malformed,
            "maxJobs": index.max_jobs,
            "bytes": index.nbytes,
            "maxBytes": index.max_bytes,
            "lastOffset": index.last_offset,
            "retentionSeconds": self.retention,
        }
