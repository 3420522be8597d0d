"""What the routes ask of an OperationStore, against IndexStore and PostgresStore (a real PostgreSQL):
tenants, the cap, idempotency keys, pages; and PostgresStore's 503 when its database is gone."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from controlplane_api.errors import ApiError
from controlplane_api.pgstore import PostgresStore
from controlplane_api.settings import load_api_settings
from controlplane_api.store import IndexStore, OperationStore
from controlplane_workers.ids import new_job_id
from controlplane_workers.models import Job, JobStatus


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
