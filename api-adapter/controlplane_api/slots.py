"""Queued-job slots reserved by submissions still being published, per tenant.

A slot is taken before the publish (no await between a store's check and the take), so concurrent
submissions cannot overshoot a tenant's cap, and given back when the publish fails or when the job's
own record starts counting it. Both stores (the index and PostgreSQL) keep theirs in one of these.
"""

from __future__ import annotations


class Reservations:
    """job id -> tenant of each slot taken, and how many each tenant holds."""

    def __init__(self) -> None:
        self.by_job: dict[str, str | None] = {}
        self.count: dict[str | None, int] = {}

    def of(self, tenant: str | None) -> int:
        return self.count.get(tenant, 0)

    def take(self, job_id: str, tenant: str | None) -> None:
        self.by_job[job_id] = tenant
        self.count[tenant] = self.count.get(tenant, 0) + 1

    def release(self, job_id: str) -> None:
        """Give back `job_id`'s slot; idempotent."""
        if job_id not in self.by_job:
            return
        tenant = self.by_job.pop(job_id)
        left = self.count[tenant] - 1
        if left:
            self.count[tenant] = left
        else:
            del self.count[tenant]
