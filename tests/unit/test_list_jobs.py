"""StatusIndex.list_jobs: the one listing behind JobQueue.list_jobs and the API's GET /jobs (IndexStore.page).

Newest first, filtered by tenant and status, `after` continues after the previous page's last job, and the
page size is bounded (1 to MAX_PAGE) with a ValueError that says so."""

from __future__ import annotations

import time

import pytest

from controlplane_api.store import IndexStore
from controlplane_workers import JobPage
from controlplane_workers.ids import new_job_id
from controlplane_workers.models import JobStatus
from controlplane_workers.status import MAX_PAGE, StatusIndex
from tests.unit.test_status_index import batch, ended

pytestmark = pytest.mark.timeout(30)


def submitted(index: StatusIndex, tenant: str, count: int) -> list[str]:
    """`count` Accepted jobs of `tenant`, oldest first."""
    ids = [new_job_id() for _ in range(count)]
    for job_id in ids:
        job = {
            "id": job_id,
            "provider_namespace": "Demo.Compute",
            "resource_type": "virtualMachines",
            "operation": "create",
            "request": {"resource_name": f"vm-{job_id[-6:]}"},
            "tenant": tenant,
            "priority": 5,
            "submitted_at": time.time(),
        }
        index.apply(batch([{"job": job, "at": time.time()}]))
    return ids


def every_page(index: StatusIndex, **filters: object) -> list[list[str]]:
    pages, after = [], None
    while True:
        page = index.list_jobs(after=after, **filters)  # type: ignore[arg-type]
        pages.append([r.job_id for r in page.jobs])
        if page.after is None:
            return pages
        assert page.after == page.jobs[-1].job_id
        after = page.after


def test_pages_of_one_tenant_newest_first_cover_its_jobs_once():
    index = StatusIndex()
    a, b = submitted(index, "a", 7), submitted(index, "b", 3)
    index.apply(batch([ended(a[2]), ended(a[5], kind="failed")]))  # frozen jobs list like jobs in flight
    assert every_page(index, tenant="a", limit=3) == [a[::-1][0:3], a[::-1][3:6], a[::-1][6:]]
    assert every_page(index, tenant="b", limit=3) == [b[::-1]]  # exactly one full page: no empty one after it
    assert every_page(index, limit=4) == [(a + b)[::-1][i : i + 4] for i in (0, 4, 8)]  # None: every tenant's
    assert every_page(index, tenant="nobody") == [[]]
    record = index.list_jobs(tenant="a", limit=1).jobs[0]
    assert (record.tenant, record.status, record.resource_name) == ("a", JobStatus.ACCEPTED, f"vm-{a[-1][-6:]}")


def test_status_filters_by_enum_or_name_and_a_bad_name_is_refused():
    index = StatusIndex()
    jobs = submitted(index, "a", 4)
    index.apply(batch([ended(jobs[0]), ended(jobs[3])]))
    assert [r.job_id for r in index.list_jobs(status=JobStatus.SUCCEEDED).jobs] == [jobs[3], jobs[0]]
    assert [r.job_id for r in index.list_jobs(status="Accepted", tenant="a").jobs] == [jobs[2], jobs[1]]
    with pytest.raises(ValueError, match="status must be one of Accepted, Running, Succeeded, Failed, Canceled"):
        index.list_jobs(status="Done")


def test_the_page_size_is_bounded_at_max_page():
    index = StatusIndex()
    submitted(index, "a", 2)
    assert MAX_PAGE == 1000
    assert len(index.list_jobs(limit=MAX_PAGE).jobs) == 2  # at the bound
    for bad in (MAX_PAGE + 1, 0, -1, True, 2.0, "2"):  # over it, under it, not an int
        with pytest.raises(ValueError, match=f"limit must be an integer from 1 to {MAX_PAGE}"):
            index.list_jobs(limit=bad)  # type: ignore[arg-type]


def test_a_full_page_of_max_page_jobs_then_the_rest():
    index = StatusIndex()
    jobs = submitted(index, "a", MAX_PAGE + 1)
    first = index.list_jobs(limit=MAX_PAGE)
    assert len(first.jobs) == MAX_PAGE and first.after == jobs[1]
    assert index.list_jobs(limit=MAX_PAGE, after=first.after) == JobPage([index.get(jobs[0])], None)  # type: ignore[list-item]


def test_an_id_not_the_tenants_own_starts_from_the_top():
    """Another tenant's id, an unknown one and an evicted one answer alike: the page tells nothing of them."""
    index = StatusIndex(max_jobs=4)
    mine = submitted(index, "a", 2)
    theirs = submitted(index, "b", 1)
    for after in (theirs[0], new_job_id(), "not-a-job"):
        assert [r.job_id for r in index.list_jobs(tenant="a", after=after).jobs] == mine[::-1], after
    assert [r.job_id for r in index.list_jobs(tenant="a", after=mine[1]).jobs] == [mine[0]]  # its own pages on


async def test_a_job_that_changed_status_since_its_page_still_continues_the_listing():
    """The API's store once looked for `after` among the jobs that matched the filter: a job that was Running on
    the last page and ended since then matched no more, and the next page came back empty, ending the listing."""
    store = IndexStore(1_000, 86_400)
    jobs = submitted(store.index, "a", 3)
    store.index.apply(batch([{"job_id": j, "type": "running", "at": time.time()} for j in jobs]))
    first, after = await store.page("a", JobStatus.RUNNING, 1, None)
    assert [r.job_id for r in first] == [jobs[2]] and after == jobs[2]
    store.index.apply(batch([ended(jobs[2])]))  # the page's last job ends before the next page is asked for
    rest, after = await store.page("a", JobStatus.RUNNING, 1, after)
    assert [r.job_id for r in rest] == [jobs[1]] and after == jobs[1]
