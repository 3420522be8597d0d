"""The PostgreSQL operation store's schema, applied by the projector (and the API) at start (idempotent).

One row per job (`cpw_jobs`, partitioned by day: pgpartitions.py) and one row per followed stream
(`cpw_projector`) holding the last stream offset applied: it changes in the same transaction as the
rows, which is what makes the projection exactly-once in effect. Each migration runs in one transaction
under an advisory lock, so two starting processes do not race and a failed one leaves nothing half
done. A database migrated by a newer release refuses this one with a clear message.

Versions: 1 one unpartitioned `cpw_jobs`; 2 `cpw_jobs` range-partitioned by day on `job_id` (the
rows of version 1 are moved into it). Columns added within a version are nullable and last, so a release
before them reads and writes the table as before: `not_before` (delayed jobs, issue 20).
"""

from __future__ import annotations

import time
from typing import Any

from .pgpartitions import AHEAD_DAYS, MIGRATE_LOCK, add_days, day_of

SCHEMA_VERSION = 2
LOCK_KEY = 0x63707769  # pg_try_advisory_lock key of the active projector ("cpwi")
CHANNEL = "cpw_jobs_ended"  # NOTIFY channel: payload = comma-separated ids of jobs that just ended

BASE = """
CREATE TABLE IF NOT EXISTS cpw_schema (id int PRIMARY KEY DEFAULT 1 CHECK (id = 1), version int NOT NULL);
CREATE TABLE IF NOT EXISTS cpw_projector (
    stream text PRIMARY KEY,
    last_offset bigint NOT NULL,
    events bigint NOT NULL DEFAULT 0,
    malformed bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""
# Indexes, for what the routes ask: by id (the key); a tenant's page, newest first, with or without a
# status (keyset on job_id); a tenant's active jobs (the queued-jobs cap: a small partial index);
# an Idempotency-Key.
JOBS = """
CREATE TABLE IF NOT EXISTS cpw_jobs (
    job_id text COLLATE "C" PRIMARY KEY,
    status text NOT NULL,
    terminal boolean NOT NULL DEFAULT false,
    namespace text,
    resource_type text,
    operation text,
    resource_name text,
    tenant text,
    priority smallint,
    attempts int NOT NULL DEFAULT 0,
    worker_id text,
    submitted_at double precision,
    started_at double precision,
    finished_at double precision,
    result jsonb,
    error_code text,
    error_message text,
    idem_key text,
    fingerprint text,
    duplicates int NOT NULL DEFAULT 0,
    redrives int NOT NULL DEFAULT 0,
    not_before double precision
) PARTITION BY RANGE (job_id);
CREATE TABLE IF NOT EXISTS cpw_jobs_default PARTITION OF cpw_jobs DEFAULT;
CREATE INDEX IF NOT EXISTS cpw_jobs_tenant_id ON cpw_jobs (tenant, job_id DESC);
CREATE INDEX IF NOT EXISTS cpw_jobs_tenant_status_id ON cpw_jobs (tenant, status, job_id DESC);
CREATE INDEX IF NOT EXISTS cpw_jobs_active ON cpw_jobs (tenant) WHERE NOT terminal;
CREATE INDEX IF NOT EXISTS cpw_jobs_idem_key ON cpw_jobs (idem_key) WHERE idem_key IS NOT NULL;
"""
# Columns added to version 2 after its first release: (name, type), added to a table made without them.
ADDED = (("not_before", "double precision"),)
HAS_COLUMN = "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'cpw_jobs'::regclass AND attname = $1)"
# Version 1's table, set aside (its index names are taken by version 2's) until its rows are moved.
V1_ASIDE = """
ALTER TABLE cpw_jobs RENAME TO cpw_jobs_v1;
ALTER TABLE cpw_jobs_v1 DROP CONSTRAINT IF EXISTS cpw_jobs_pkey;
DROP INDEX IF EXISTS cpw_jobs_tenant_id, cpw_jobs_tenant_status_id, cpw_jobs_active, cpw_jobs_idem_key;
"""
V1_DAYS = (
    "SELECT DISTINCT (('x' || lpad(left(job_id, 12), 16, '0'))::bit(64)::bigint / 86400000)::int AS day "
    "FROM cpw_jobs_v1 WHERE job_id ~ '^[0-9a-f]{12}7[0-9a-f]{19}$'"
)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer release: running this one could corrupt it."""


async def migrate(conn: Any, now: float | None = None) -> None:
    """Bring the schema to SCHEMA_VERSION (nothing to do when it is there), with the partitions of
    today and the next days; refuse a newer one."""
    today = day_of(time.time() if now is None else now)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await conn.execute(BASE)
        found = await conn.fetchval("SELECT version FROM cpw_schema")
        if found is not None and found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the operation store's schema is version {found}, this release knows {SCHEMA_VERSION}: "
                "upgrade cpw, or restore the database"
            )
        if found == 1:
            await _from_v1(conn)
        await conn.execute(JOBS)
        await _add_columns(conn)
        await add_days(conn, range(today, today + AHEAD_DAYS + 1))
        await conn.execute(
            "INSERT INTO cpw_schema (version) VALUES ($1) ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
            SCHEMA_VERSION,
        )


async def _add_columns(conn: Any) -> None:
    """The ADDED columns a table lacks. Asked first: ALTER TABLE locks the table (and each partition)
    against its readers even when the column is there, and this runs at every start."""
    for name, kind in ADDED:
        if not await conn.fetchval(HAS_COLUMN, name):
            await conn.execute(f"ALTER TABLE cpw_jobs ADD COLUMN {name} {kind}")


async def _from_v1(conn: Any) -> None:
    """Version 1 -> 2: the rows of the unpartitioned table into the partitioned one, a partition per day
    they span (the projector's upkeep then drops the days past the retention)."""
    await conn.execute(V1_ASIDE)
    await conn.execute(JOBS)
    await add_days(conn, [row["day"] for row in await conn.fetch(V1_DAYS)])
    await conn.execute("INSERT INTO cpw_jobs SELECT * FROM cpw_jobs_v1")  # its columns are the first ones
    await conn.execute("DROP TABLE cpw_jobs_v1")
