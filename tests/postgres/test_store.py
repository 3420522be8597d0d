"""What the routes ask of an OperationStore, against IndexStore and PostgresStore (a real PostgreSQL):
tenants, the cap, idempotency keys, pages; and PostgresStore's 503 when its database is gone."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson
import pytest

from controlplane_api.errors import ApiError
from controlplane_api.pgpages import page_queries
from controlplane_api.pgstore import PostgresStore
from controlplane_api.settings import load_api_settings
from controlplane_api.store import IndexStore, OperationStore
from controlplane_workers.ids import new_job_id
from controlplane_workers.models import Job, JobStatus
from tests.postgres.bench_pgstore import load_rows
from tests.unit.test_status_index import batch, ended


def job(tenant: str, name: str) -> Job:
    time.sleep(0.002)  # ids a millisecond apart: "newest first" is well defined
    return Job.model_validate(
        {
            "id": new_job_id(),
            "provider_namespace": "N",
            "resource_type": "t",
            "operation": "create",
            "request": {"resource_name": name},
            "tenant": tenant,
        }
    )


async def publish(store: OperationStore, made: Job, key: tuple[str, str] | None) -> None:
    """What the API does with a job it published: the queue records it in the index, then the store hears."""
    if isinstance(store, IndexStore):
        store.index.accept(made)
        if key is not None:  # in the index, keys come from the stream's Accepted record
            store.index.remember_key(key[0], made.id, key[1], made.submitted_at)
    await store.accepted(made, key)


@pytest.fixture(params=["index", "postgresql"])
async def store(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[OperationStore]:
    if request.param == "index":
        yield IndexStore(1_000, 86_400)
        return
    pg = PostgresStore(load_api_settings(postgres_url=pg_url, api_retry_after=3))
    await pg.open()
    yield pg
    await pg.close()


async def test_what_the_routes_ask_of_a_store(store):
    a1, a2, b1 = job("a", "one"), job("a", "two"), job("b", "three")
    for made in (a1, a2, b1):
        assert await store.reserve(made.tenant, made.id, cap=2)
        await publish(store, made, ("key-" + made.id, "fp") if made is a1 else None)
        store.release(made.id)
    assert not await store.reserve("a", new_job_id(), cap=2)  # two in flight already
    assert await store.active_count("a") == 2 and await store.active_count("b") == 1
    seen = await store.get(a1.id, "a")
    assert seen is not None and seen.status is JobStatus.ACCEPTED and seen.resource_name == "one"
    assert await store.get(a1.id, "b") is None and await store.get(a1.id, None) is not None
    assert await store.idempotent("key-" + a1.id) == (a1.id, "fp", a1.submitted_at)
    first, token = await store.page("a", None, 1, None)
    assert [r.job_id for r in first] == [a2.id] and token == a2.id
    assert [r.job_id for r in (await store.page("a", None, 1, token))[0]] == [a1.id]
    # another tenant's id as a skipToken starts from the top: it tells nothing of that job
    assert [r.job_id for r in (await store.page("a", None, 5, b1.id))[0]] == [a2.id, a1.id]
    assert (await store.counts("a"))["Accepted"] == 2 and (await store.counts(None))["Accepted"] == 3
    assert store.miss_code(new_job_id()) == "OperationNotFound"


async def test_postgres_answers_503_when_its_database_is_gone(pg_url):
    store = PostgresStore(load_api_settings(postgres_url=pg_url, api_retry_after=3))
    await store.open()
    await store.pool.close()
    with pytest.raises(ApiError) as caught:
        await store.get(new_job_id(), "a")
    assert caught.value.status == 503 and caught.value.headers["Retry-After"] == "3"
    await store.close()


async def test_postgres_accepts_concurrent_submissions_in_few_inserts_and_holds_the_cap(pg_url, monkeypatch):
    import asyncio

    import controlplane_api.pgstore as pgstore

    one = PostgresStore(load_api_settings(postgres_url=pg_url))
    other = PostgresStore(load_api_settings(postgres_url=pg_url))  # another replica
    await one.open()
    await other.open()
    try:
        jobs = [job("a", f"j{i}") for i in range(60)]

        async def submit(made: Job) -> bool:
            if not await one.reserve("a", made.id, cap=40):
                return False
            await one.accepted(made, None)
            one.release(made.id)
            return True

        monkeypatch.setattr(pgstore, "COUNT_FOR", 60.0)  # the count, once read, holds for the whole burst
        assert await one.active_count("a") == 0
        admitted = await asyncio.gather(*(submit(made) for made in jobs))
        assert sum(admitted) == 40  # at the cap, not over it, with 60 in flight at once
        assert one.accepts.inserts < 40  # group commit: the rows of concurrent submissions share INSERTs
        assert (await other.counts("a"))["Accepted"] == 40  # every accepted row committed, seen elsewhere
        assert not await other.reserve("a", new_job_id(), cap=40)  # the other replica counts them too

        # Ended jobs free their slots at the next count query (COUNT_FOR later; here at once). Without
        # the cache every reservation queries, and a burst's reservations refuse each other (under the cap).
        monkeypatch.setattr(pgstore, "COUNT_FOR", 0.0)
        conn = await asyncpg.connect(pg_url)
        await conn.execute("UPDATE cpw_jobs SET status = 'Succeeded', terminal = true WHERE resource_name < 'j2'")
        await conn.close()
        assert await one.active_count("a") == 40 - 12  # j0, j1, j10..j19 ended
    finally:
        await one.close()
        await other.close()


async def test_a_delayed_jobs_start_time_is_kept_by_both_stores(store):
    delayed = job("a", "later").model_copy(update={"not_before": time.time() + 3600})
    plain = job("a", "now")
    for made in (delayed, plain):
        await publish(store, made, None)
    for _ in range(2):  # PostgresStore: the submission's own first answer (from memory), then its group-committed row
        assert (await store.get(delayed.id, "a")).not_before == delayed.not_before
        assert (await store.get(plain.id, "a")).not_before is None


async def ended_since(store: OperationStore, job_id: str) -> None:
    """The job ends in the store's view, as the stream (or the projector) would tell it."""
    if isinstance(store, IndexStore):
        store.index.apply(batch([ended(job_id)]))
        return
    async with store.pool.acquire() as conn:  # type: ignore[attr-defined]
        await conn.execute("UPDATE cpw_jobs SET status = 'Succeeded', terminal = true WHERE job_id = $1", job_id)


async def test_a_job_that_ended_since_its_page_still_continues_a_listing_by_status(store):
    """The skipToken is found by id, not among the jobs that still match the filter: a page's last job
    that ended before the next page is asked for must not end the listing (the bug fixed in StatusIndex,
    held here for both stores)."""
    jobs = [job("a", f"r{i}") for i in range(3)]
    for made in jobs:
        await publish(store, made, None)
        await store.get(made.id, "a")  # PostgresStore: past the submission's own first answer, to the row
    first, after = await store.page("a", JobStatus.ACCEPTED, 1, None)
    assert [r.job_id for r in first] == [jobs[2].id] and after == jobs[2].id
    await ended_since(store, jobs[2].id)
    rest, after = await store.page("a", JobStatus.ACCEPTED, 1, after)
    assert [r.job_id for r in rest] == [jobs[1].id] and after == jobs[1].id
    # the tenant's own token with nothing after it: an empty last page, not the listing from the top again
    assert await store.page("a", JobStatus.ACCEPTED, 5, jobs[0].id) == ([], None)


class Counted:
    """The store's pool, counting its checkouts and the statements run on them (a round trip each)."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.checkouts, self.statements = pool, 0, list[str]()

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[Any]:
        self.checkouts += 1
        async with self.pool.acquire(timeout=timeout) as conn:
            yield Statements(conn, self.statements)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


class Statements:
    def __init__(self, conn: Any, into: list[str]) -> None:
        self.conn, self.into = conn, into

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.conn, name)
        if name not in ("execute", "fetch", "fetchrow", "fetchval"):
            return method

        async def counted(query: str, *args: object, **kwargs: object) -> Any:
            self.into.append(query)
            return await method(query, *args, **kwargs)

        return counted


def scanned(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from scanned(child)


async def test_postgres_pages_on_from_a_skip_token_in_one_statement_on_the_indexes(pg_url):
    """A deep page (skipToken) was a lookup of the token's row and then the page: two checkouts, two
    statements (each checkout also costs asyncpg's reset round trip). It is one statement now, planned
    on a populated table as index scans of the token's partition and older ones only."""
    await load_rows(pg_url, 20_000)
    store = PostgresStore(load_api_settings(postgres_url=pg_url))
    await store.open()
    conn = await asyncpg.connect(pg_url)
    try:
        token, day = await conn.fetchrow(
            "SELECT job_id, tableoid::regclass::text FROM cpw_jobs WHERE tenant = 'tenant-a' "
            "ORDER BY job_id DESC OFFSET 9000 LIMIT 1"
        )
        expected = await conn.fetch(
            "SELECT job_id FROM cpw_jobs WHERE tenant = 'tenant-a' AND status = 'Succeeded' AND job_id < $1 "
            "ORDER BY job_id DESC LIMIT 100",
            token,
        )
        store.pool = counted = Counted(store.pool)
        records, after = await store.page("tenant-a", JobStatus.SUCCEEDED, 100, token)
        assert [r.job_id for r in records] == [row["job_id"] for row in expected] and after == records[-1].job_id
        assert (counted.checkouts, len(counted.statements)) == (1, 1), counted.statements

        # the tenant's token, not another's: tenant-b's starts from the top (a second statement, rarely run)
        theirs = await conn.fetchval("SELECT job_id FROM cpw_jobs WHERE tenant = 'tenant-b' LIMIT 1")
        top, _ = await store.page("tenant-a", JobStatus.SUCCEEDED, 100, None)
        assert (await store.page("tenant-a", JobStatus.SUCCEEDED, 100, theirs))[0] == top

        query, _, args = page_queries("tenant-a", JobStatus.SUCCEEDED, 100, token)
        plan = orjson.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *args))[0]["Plan"]
        nodes = list(scanned(plan))
        assert not [n for n in nodes if n["Node Type"] in ("Seq Scan", "Sort")], plan  # keyset: no scan, no sort
        partitions = {n["Relation Name"] for n in nodes if "Relation Name" in n}
        newer = {p for p in partitions if p != "cpw_jobs_default" and p > day}
        assert day in partitions and not newer, partitions  # the days after the token's are pruned
        probe = [n for n in nodes if n.get("Subplan Name") or n.get("Parent Relationship") == "InitPlan"]
        assert probe and probe[0]["Node Type"] in ("Index Scan", "Index Only Scan"), plan  # the token's row
    finally:
        await conn.close()
        await store.close()
