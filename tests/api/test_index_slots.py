"""The per-tenant queued-job slots of ApiIndex: reserved before the publish, given back on failure, and
counted once when the job's record lands (no broker needed)."""

from __future__ import annotations

from controlplane_api.index import ApiIndex
from controlplane_workers.models import Job, Operation, ResourceRequest


def job(job_id: str, tenant: str) -> Job:
    return Job(
        id=job_id, provider_namespace="N.S", resource_type="t", operation=Operation.GET,
        request=ResourceRequest(), tenant=tenant,
    )  # fmt: skip


def test_reserved_slots_count_until_released_or_recorded():
    index = ApiIndex(100)
    assert index.reserve("a", "j1", 2) and index.reserve("a", "j2", 2)
    assert not index.reserve("a", "j3", 2) and index.active_count("a") == 2
    assert index.reserve("b", "j3", 2)  # per tenant
    index.release("j2")  # its publish failed: the slot is free again
    index.release("j2")  # idempotent
    assert index.active_count("a") == 1
    index.accept(job("j1", "a"))  # confirmed: the record counts it now, the reservation no longer does
    assert index.active_count("a") == 1 and index.reserved.by_job == {"j3": "b"}
    index.release("j1")  # the submitter's own release after the confirm changes nothing
    assert index.active_count("a") == 1 and index.active_count("b") == 1
