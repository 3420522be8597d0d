"""The PostgreSQL operation store's schema, applied by the projector at start (idempotent).

One row per job (`cpw_jobs`) and one row per followed stream (`cpw_projector`) holding the last stream
offset applied: it changes in the same transaction as the rows, which is what makes the projection
exactly-once in effect. A database migrated by a newer release refuses this one with a clear message.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1
LOCK_KEY = 0x63707769  # pg_try_advisory_lock key of the active projector ("cpwi")
CHANNEL = "cpw_jobs_ended"  # NOTIFY channel: payload = comma-separated ids of jobs that just ended

DDL = """
CREATE TABLE IF NOT EXISTS cpw_schema (id int PRIMARY KEY DEFAULT 1 CHECK (id = 1), version int NOT NULL);
CREATE TABLE IF NOT EXISTS cpw_projector (
    stream text PRIMARY KEY,
    last_offset bigint NOT NULL,
    events bigint NOT NULL DEFAULT 0,
    malformed bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS cpw_jobs (
    job_id text PRIMARY KEY,
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
    redrives int NOT NULL DEFAULT 0
);
-- added by the delayed jobs (issue 20): nullable, so a release before it reads and writes the table as before
ALTER TABLE cpw_jobs ADD COLUMN IF NOT EXISTS not_before double precision;
CREATE INDEX IF NOT EXISTS cpw_jobs_tenant_id ON cpw_jobs (tenant, job_id DESC);
CREATE INDEX IF NOT EXISTS cpw_jobs_tenant_status_id ON cpw_jobs (tenant, status, job_id DESC);
CREATE INDEX IF NOT EXISTS cpw_jobs_active ON cpw_jobs (tenant) WHERE NOT terminal;
CREATE INDEX IF NOT EXISTS cpw_jobs_idem_key ON cpw_jobs (idem_key) WHERE idem_key IS NOT NULL;
"""


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer release: running this one could corrupt it."""


async def migrate(conn: Any) -> None:
    """Create what is missing, under a transaction-scoped lock so two starting processes do not race."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY + 1)
        await conn.execute(DDL)
        found = await conn.fetchval("SELECT version FROM cpw_schema")
        if found is not None and found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the operation store's schema is version {found}, this release knows {SCHEMA_VERSION}: "
                "upgrade cpw, or restore the database"
            )
        await conn.execute(
            "INSERT INTO cpw_schema (version) VALUES ($1) ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
            SCHEMA_VERSION,
        )
