"""The operation store's daily partitions on a real PostgreSQL: made ahead, dropped past the retention
(the clock is passed in: no test waits days), pages across days, and the migration from version 1."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from controlplane_api import projector_metrics
from controlplane_api.pgpartitions import DAY_MS, Upkeep, add_days, day_of, partition_days, partition_name, upkeep
from controlplane_api.pgschema import BASE, JOBS, MIGRATE_LOCK, SCHEMA_VERSION, SchemaTooNew, migrate
from controlplane_api.pgstore import PostgresStore
from controlplane_api.projector import LOST, Projector
from controlplane_api.settings import load_api_settings
from controlplane_workers.ids import new_job_id
from controlplane_workers.models import Job, JobStatus

NOW = time.time()
TODAY = day_of(NOW)
DAY = 86_400.0


def job(tenant: str, at: float, job_id: str | None = None) -> Job:
    return Job.model_validate(
        {
            "id": job_id or new_job_id(at),
            "provider_namespace": "N",
            "resource_type": "t",
            "operation": "create",
            "request": {"resource_name": "r"},
            "tenant": tenant,
            "submitted_at": at,
        }
    )


@pytest.fixture
async def conn(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(load_api_settings(postgres_url=pg_url))
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def reader(pg_url: str) -> AsyncIterator[PostgresStore]:
    """Another replica: reads what is in PostgreSQL (the writer answers its own first read from memory)."""
    store = PostgresStore(load_api_settings(postgres_url=pg_url))
    await store.open()
    yield store
    await store.close()


async def make_days(conn: asyncpg.Connection, days: list[int]) -> None:
    """Partitions of past days, made directly (as if the projector had run then)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await add_days(conn, days)


async def where(conn: asyncpg.Connection, job_id: str) -> str | None:
    return await conn.fetchval("SELECT tableoid::regclass::text FROM cpw_jobs WHERE job_id = $1", job_id)


async def test_partitions_are_made_ahead_and_dropped_past_the_retention(conn, store, reader):
    assert await partition_days(conn) == [TODAY, TODAY + 1, TODAY + 2]  # the store's migration made them
    await make_days(conn, [TODAY - 40, TODAY - 31, TODAY - 30, TODAY - 29, TODAY - 1])
    ages = {age: job("a", NOW - age * DAY) for age in (0, 1, 29, 30, 31, 35, 40)}  # 35: a day with no partition
    own_old, own_new = job("a", NOW - 40 * DAY, "caller-old"), job("a", NOW, "caller-new")  # not time ids
    for made in [*ages.values(), own_old, own_new]:
        await store.accepted(made, None)
    assert await where(conn, ages[1].id) == f"cpw_jobs_p{time.strftime('%Y%m%d', time.gmtime(NOW - DAY))}"
    assert await where(conn, ages[35].id) == await where(conn, own_new.id) == "cpw_jobs_default"

    made, dropped = await upkeep(conn, NOW, retention_days=30)
    assert made == [] and dropped == [TODAY - 40, TODAY - 31]  # a day goes once wholly older than 30 days
    assert await partition_days(conn) == [TODAY - 30, TODAY - 29, TODAY - 1, TODAY, TODAY + 1, TODAY + 2]
    for age, made_job in ages.items():
        found = await reader.get(made_job.id, "a")
        assert (found is not None) == (age <= 30), age
        assert found is None or found.status is JobStatus.ACCEPTED
    assert await reader.get(own_old.id, "a") is None and await reader.get(own_new.id, "a") is not None
    assert store.miss_code(ages[40].id) == "OperationNotFound"  # retention is the contract
    assert await upkeep(conn, NOW, retention_days=30) == ([], [])  # nothing more to do

    made, dropped = await upkeep(conn, NOW + DAY, retention_days=30)  # a day later
    assert made == [TODAY + 3] and dropped == [TODAY - 30]
    assert await reader.get(ages[30].id, "a") is None and await reader.get(ages[29].id, "a") is not None


async def test_making_a_partition_moves_its_rows_out_of_the_default_one(conn, store, reader):
    early = job("a", NOW + 5 * DAY)  # a clock ahead: no partition yet
    await store.accepted(early, None)
    assert await where(conn, early.id) == "cpw_jobs_default"
    made, _ = await upkeep(conn, NOW + 5 * DAY, retention_days=30)
    assert made == [TODAY + 5, TODAY + 6, TODAY + 7]  # that day and the two after it
    assert await where(conn, early.id) == f"cpw_jobs_p{time.strftime('%Y%m%d', time.gmtime(NOW + 5 * DAY))}"
    assert (await reader.get(early.id, "a")) is not None


async def test_pages_run_newest_first_across_days(conn, store):
    await make_days(conn, [TODAY - 2, TODAY - 1])
    jobs = [job(tenant, NOW - age * DAY + i) for age in (0, 1, 2, 3) for i, tenant in enumerate("abab")]
    for made in jobs:  # age 3 has no partition: its rows are in the default one, and paged all the same
        await store.accepted(made, None)
    mine = sorted((j.id for j in jobs if j.tenant == "a"), reverse=True)
    seen, token = [], None
    while True:
        page, token = await store.page("a", None, 3, token)
        seen += [r.job_id for r in page]
        if token is None:
            break
    assert seen == mine
    by_status = [r.job_id for r in (await store.page("a", JobStatus.ACCEPTED, 100, mine[2]))[0]]
    assert by_status == mine[3:]


async def test_the_active_count_reads_an_index_not_the_table(conn, store):
    await store.accepted(job("a", NOW), None)
    await conn.execute("SET enable_seqscan = off")
    plan = "\n".join(
        r[0] for r in await conn.fetch("EXPLAIN SELECT count(*) FROM cpw_jobs WHERE tenant = 'a' AND NOT terminal")
    )
    assert "Seq Scan" not in plan and "Index Only Scan using cpw_jobs_p" in plan, plan


V1 = """
CREATE TABLE cpw_schema (id int PRIMARY KEY DEFAULT 1 CHECK (id = 1), version int NOT NULL);
CREATE TABLE cpw_projector (stream text PRIMARY KEY, last_offset bigint NOT NULL, events bigint NOT NULL DEFAULT 0,
    malformed bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE cpw_jobs (job_id text PRIMARY KEY, status text NOT NULL, terminal boolean NOT NULL DEFAULT false,
    namespace text, resource_type text, operation text, resource_name text, tenant text, priority smallint,
    attempts int NOT NULL DEFAULT 0, worker_id text, submitted_at double precision, started_at double precision,
    finished_at double precision, result jsonb, error_code text, error_message text, idem_key text,
    fingerprint text, duplicates int NOT NULL DEFAULT 0, redrives int NOT NULL DEFAULT 0);
CREATE INDEX cpw_jobs_tenant_id ON cpw_jobs (tenant, job_id DESC);
CREATE INDEX cpw_jobs_tenant_status_id ON cpw_jobs (tenant, status, job_id DESC);
CREATE INDEX cpw_jobs_active ON cpw_jobs (tenant) WHERE NOT terminal;
CREATE INDEX cpw_jobs_idem_key ON cpw_jobs (idem_key) WHERE idem_key IS NOT NULL;
INSERT INTO cpw_schema (version) VALUES (1);
INSERT INTO cpw_projector (stream, last_offset, events) VALUES ('provider.results', 41, 99);
"""


async def test_a_version_1_database_is_migrated_once_and_keeps_every_row(conn):
    await conn.execute(V1)
    ids = [new_job_id(NOW - age * DAY) for age in (0, 0, 3, 7)] + ["own-id"]
    for n, job_id in enumerate(ids):
        await conn.execute(
            "INSERT INTO cpw_jobs (job_id, status, terminal, tenant, attempts, result, idem_key) "
            "VALUES ($1, 'Succeeded', true, 'a', $2, '{\"n\": 1}', $3)",
            job_id,
            n,
            f"k{n}",
        )
    before = sorted(map(tuple, await conn.fetch("SELECT * FROM cpw_jobs")))

    await migrate(conn, NOW)
    await migrate(conn, NOW)  # again: nothing to do
    assert await conn.fetchval("SELECT version FROM cpw_schema") == SCHEMA_VERSION == 2
    assert await conn.fetchval("SELECT relkind FROM pg_class WHERE relname = 'cpw_jobs'") == b"p"
    assert await conn.fetchval("SELECT to_regclass('cpw_jobs_v1')") is None
    after = await conn.fetch("SELECT * FROM cpw_jobs")
    assert sorted(tuple(row)[: len(before[0])] for row in after) == before
    assert all(row["not_before"] is None for row in after)  # a column added after version 1, last
    assert await partition_days(conn) == [TODAY - 7, TODAY - 3, TODAY, TODAY + 1, TODAY + 2]
    assert await where(conn, ids[2]) != "cpw_jobs_default" and await where(conn, "own-id") == "cpw_jobs_default"
    assert await conn.fetchval("SELECT last_offset FROM cpw_projector") == 41  # the projector resumes there
    assert await conn.fetchval("SELECT job_id FROM cpw_jobs WHERE idem_key = 'k2'") == ids[2]


HAS_NOT_BEFORE = (
    "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'cpw_jobs'::regclass AND attname = 'not_before')"
)
PARTITIONS_WITHOUT_IT = (
    "SELECT count(*) FROM pg_inherits i WHERE i.inhparent = 'cpw_jobs'::regclass AND NOT EXISTS "
    "(SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.inhrelid AND a.attname = 'not_before')"
)


async def test_a_version_2_database_made_before_delayed_jobs_gets_their_column_and_keeps_its_rows(pg_url, conn):
    first_v2 = JOBS.replace(",\n    not_before double precision", "")
    assert first_v2 != JOBS
    async with conn.transaction():  # version 2 as first released: no not_before
        await conn.execute(BASE + first_v2)
        await conn.execute("INSERT INTO cpw_schema (version) VALUES (2)")
        await add_days(conn, [TODAY - 1, TODAY])
    ids = [new_job_id(NOW - DAY), new_job_id(NOW)]
    for job_id in ids:
        await conn.execute("INSERT INTO cpw_jobs (job_id, status, tenant) VALUES ($1, 'Accepted', 'a')", job_id)
    assert not await conn.fetchval(HAS_NOT_BEFORE)

    await migrate(conn, NOW)
    assert await conn.fetchval("SELECT version FROM cpw_schema") == 2
    assert await conn.fetchval(HAS_NOT_BEFORE)
    assert await conn.fetchval(PARTITIONS_WITHOUT_IT) == 0
    assert sorted(r["job_id"] for r in await conn.fetch("SELECT job_id FROM cpw_jobs WHERE not_before IS NULL")) == ids

    # Once there, a start does not ALTER the table: a reader's open transaction does not hold it up.
    reading = await asyncpg.connect(pg_url)
    try:
        async with reading.transaction():
            await reading.fetch("SELECT * FROM cpw_jobs")
            await conn.execute("SET lock_timeout = '2s'")
            await migrate(conn, NOW)
    finally:
        await reading.close()


async def test_a_newer_schema_refuses_this_release(conn):
    await migrate(conn)
    await conn.execute("UPDATE cpw_schema SET version = $1", SCHEMA_VERSION + 1)
    with pytest.raises(SchemaTooNew, match=f"version {SCHEMA_VERSION + 1}, this release knows {SCHEMA_VERSION}"):
        await migrate(conn)


@pytest.mark.rabbitmq
async def test_the_active_projector_keeps_the_partitions(vhost_url, pg_url, conn):
    await migrate(conn)
    await make_days(conn, [TODAY - 40])
    later = NOW + 3 * DAY  # the projector's clock: three days on
    projector = Projector(load_api_settings(rabbitmq_url=vhost_url, postgres_url=pg_url), clock=lambda: later)
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    try:
        # An upkeep is two transactions (the days ahead made, then the old ones dropped): wait for both.
        wanted, deadline = [TODAY, TODAY + 1, TODAY + 2, TODAY + 3, TODAY + 4, TODAY + 5], time.monotonic() + 30
        while (days := await partition_days(conn)) != wanted:
            assert time.monotonic() < deadline and not running.done(), f"no upkeep: {days}"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


async def pin(conn: asyncpg.Connection, day: int) -> None:
    """A view on a day's partition: its drop fails (DependentObjectsStillExistError) until the view goes."""
    await conn.execute(f"CREATE VIEW cpw_test_pin AS SELECT * FROM {partition_name(day)}")


async def test_a_failed_upkeep_is_logged_once_counted_and_tried_again(conn, caplog):
    await migrate(conn)
    await make_days(conn, [TODAY - 40])
    await pin(conn, TODAY - 40)
    partitions = Upkeep(retention_days=30, clock=lambda: NOW + DAY)
    with caplog.at_level(logging.WARNING, "controlplane_api.projector"):
        assert await partitions.run(conn) is False
        assert not partitions.due() and partitions.wait() > 500, "tried again UPKEEP_EVERY later, not at once"
        assert await partitions.run(conn) is False
        failed = [r for r in caplog.records if "partition upkeep failed" in r.getMessage()]
        assert len(failed) == 1 and failed[0].levelno == logging.ERROR, "logged once, not per try"
        assert "DependentObjectsStillExistError" in failed[0].getMessage()
        assert partitions.failures == 2 and partitions.failing
        assert await partition_days(conn) == [TODAY - 40, TODAY, TODAY + 1, TODAY + 2, TODAY + 3], "made ahead anyway"
        await conn.execute("DROP VIEW cpw_test_pin")
        assert await partitions.run(conn) is True
    assert await partition_days(conn) == [TODAY, TODAY + 1, TODAY + 2, TODAY + 3]
    assert not partitions.failing and "works again (2 failures" in caplog.text


@pytest.mark.rabbitmq
async def test_the_projector_outlives_a_failed_upkeep(vhost_url, pg_url, conn):
    await migrate(conn)
    await make_days(conn, [TODAY - 40])
    await pin(conn, TODAY - 40)
    counted = projector_metrics.REGISTRY.get_sample_value("cpw_projector_upkeep_failures_total") or 0.0
    projector = Projector(load_api_settings(rabbitmq_url=vhost_url, postgres_url=pg_url))
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    try:
        deadline = time.monotonic() + 30
        while not (projector.following and projector.partitions.failures):
            assert time.monotonic() < deadline and not running.done(), "no upkeep"
            await asyncio.sleep(0.05)
        assert projector.ready and projector.role == "leader" and projector.status()["upkeep_failures"] == 1
        assert projector_metrics.REGISTRY.get_sample_value("cpw_projector_upkeep_failures_total") == counted + 1
        assert TODAY - 40 in await partition_days(conn)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)  # stops cleanly: the failure did not end it


@pytest.mark.rabbitmq
async def test_a_connection_cut_during_the_upkeep_ends_the_projector_and_is_no_upkeep_failure(vhost_url, pg_url, conn):
    await migrate(conn)
    projector = Projector(load_api_settings(rabbitmq_url=vhost_url, postgres_url=pg_url, worker_id="cut-upkeep"))
    running = asyncio.create_task(projector.run(asyncio.Event()))
    deadline = time.monotonic() + 30
    while not projector.following or projector.partitions.due():
        assert time.monotonic() < deadline and not running.done(), "not following"
        await asyncio.sleep(0.05)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK)  # the next upkeep waits for it (up to 5 s)
    projector.partitions.next_upkeep = 0.0
    projector.arrived.set()
    waiting = "SELECT pid FROM pg_stat_activity WHERE application_name = 'cpw-indexer cut-upkeep' AND wait_event_type = 'Lock'"
    while not (pid := await conn.fetchval(waiting)):
        assert time.monotonic() < deadline and not running.done(), "no upkeep waiting"
        await asyncio.sleep(0.01)
    await conn.execute("SELECT pg_terminate_backend($1)", pid)
    with pytest.raises(ConnectionError, match=LOST):
        await asyncio.wait_for(running, 10)
    assert projector.partitions.failures == 0 and not projector.partitions.failing


def test_bounds_of_a_day():
    assert DAY_MS == 86_400_000 and new_job_id(TODAY * DAY)[:12] == f"{TODAY * DAY_MS:012x}"
