"""JobQueue.list_jobs pages through the jobs of two tenants on a real RabbitMQ with a real `cpw worker`, the way
the API's GET /jobs does: newest first, filtered by tenant and status, `after` from page to page. A second
process reading the results stream from its start pages the same."""

from __future__ import annotations

import asyncio

import pytest

from controlplane_workers import JobQueue, JobStatus
from tests.api.support import start_worker

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(120)]


def pages(queue: JobQueue, limit: int, **filters: object) -> list[list[str]]:
    out, after = [], None
    while True:
        page = queue.list_jobs(limit=limit, after=after, **filters)  # type: ignore[arg-type]
        out.append([r.job_id for r in page.jobs])
        if page.after is None:
            return out
        after = page.after


async def test_paging_through_fifty_jobs_of_two_tenants(vhost_url, tmp_path):
    worker = await start_worker(vhost_url, tmp_path)
    try:
        async with JobQueue(vhost_url) as queue:
            submitted: dict[tuple[str, JobStatus], list[str]] = {}
            by_tenant: dict[str, list[str]] = {}
            for i in range(50):
                tenant = "tenant-a" if i % 5 else "tenant-b"  # 40 and 10
                script, status = ("permanent", JobStatus.FAILED) if i % 3 == 0 else ("ok", JobStatus.SUCCEEDED)
                request = {"resource_name": f"r{i}", "body": {"script": script}}
                job_id = await queue.submit_job("Test.Scripted", "things", "create", request, tenant=tenant)
                submitted.setdefault((tenant, status), []).append(job_id)
                by_tenant.setdefault(tenant, []).append(job_id)
            every = [j for ids in submitted.values() for j in ids]
            results = await asyncio.gather(*(queue.get_job_result(j, 60) for j in every))
            assert all(r is not None and r.terminal for r in results), results

            listing = pages(queue, 7, tenant="tenant-a")
            assert [len(p) for p in listing] == [7, 7, 7, 7, 7, 5]
            assert sum(listing, []) == by_tenant["tenant-a"][::-1]  # newest first
            failed_b = pages(queue, 2, tenant="tenant-b", status="Failed")
            assert sum(failed_b, []) == submitted[("tenant-b", JobStatus.FAILED)][::-1]
            assert all(len(p) == 2 for p in failed_b[:-1])
            assert len(sum(pages(queue, 1000), [])) == 50  # tenant None: every tenant's jobs, one page
            one = queue.list_jobs(tenant="tenant-b", status=JobStatus.SUCCEEDED, limit=1).jobs[0]
            assert (one.tenant, one.status, one.job_id) == (
                "tenant-b",
                JobStatus.SUCCEEDED,
                submitted[("tenant-b", JobStatus.SUCCEEDED)][-1],
            )
            assert one.result is not None and one.result["name"] == "r40" and one.worker_id is not None
            with pytest.raises(ValueError, match="limit must be an integer from 1 to 1000"):
                queue.list_jobs(limit=1001)

            async with JobQueue(vhost_url) as reader:  # another process, from the stream
                await asyncio.wait_for(_holds(reader, every), 30)
                assert pages(reader, 7, tenant="tenant-a") == listing
    finally:
        worker.stop()


async def _holds(reader: JobQueue, ids: list[str]) -> None:
    """Wait for each job's terminal state in the reader: its own index, read from the stream."""
    for job_id in ids:
        assert await reader.get_job_result(job_id, 30) is not None
