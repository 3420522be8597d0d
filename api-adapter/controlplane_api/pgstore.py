"""`PostgresStore`: the OperationStore over the rows `cpw indexer` writes (CPW_API_STORE=postgresql).

The replica holds no index, so it is ready as soon as it reaches RabbitMQ and PostgreSQL, whatever the
number of jobs. A job this replica accepts is inserted at once (its Accepted row: its own Location
answers immediately); the projector merges the stream's records into that row. `wait` listens for the
projector's NOTIFY of ended jobs, and re-reads the row every second in case a notification was lost
(the listening connection dropped: it is opened again, with backoff, and every waiter re-reads).

PostgreSQL unreachable: every route that needs it answers 503 + Retry-After (never a wrong 404), the
replica stays ready (a 503 per request says more than a pod pulled out of the Service), and the pool
connects again by itself. Submissions answer 503 too: the queued-jobs cap and the Idempotency-Key
cannot be checked without the store, and a job accepted unchecked could exceed the one or be a
duplicate under the other. The workers and the stream carry on; the projector catches up once back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson

from controlplane_workers.models import Job, JobError, JobResult, JobStatus, Operation
from controlplane_workers.redact import redact_text, redact_url

from .errors import unavailable
from .pgaccept import Accepts
from .pglisten import EndedJobs
from .pgpages import page_queries
from .pgschema import migrate
from .settings import ApiSettings
from .slots import Reservations

log = logging.getLogger("controlplane_api.pgstore")
# InternalClientError: the pool resetting a connection that PostgreSQL closed mid-query (seen in the
# PostgreSQL restart drill) raises it in place of the query's own error.
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, TimeoutError)
RECHECK = 1.0  # seconds between re-reads of a waited-for row, should a NOTIFY be lost
COUNT_FOR = 0.5  # seconds a tenant's active count from PostgreSQL is reused (plus this replica's accepts since)


def _record(row: Any) -> JobResult:
    code, result, operation = row["error_code"], row["result"], row["operation"]
    return JobResult.model_construct(
        job_id=row["job_id"],
        status=JobStatus(row["status"]),
        provider_namespace=row["namespace"],
        resource_type=row["resource_type"],
        operation=None if operation is None else Operation(operation),
        resource_name=row["resource_name"],
        tenant=row["tenant"],
        priority=row["priority"],
        result=None if result is None else orjson.loads(result),
        error=None if code is None else JobError.model_construct(code=code, message=row["error_message"] or ""),
        attempts=row["attempts"],
        worker_id=row["worker_id"],
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        not_before=row["not_before"],
    )


class PostgresStore:
    """OperationStore over PostgreSQL: one pool for reads and Accepted rows, one connection listening."""

    def __init__(self, settings: ApiSettings) -> None:
        if not settings.postgres_url:
            raise ValueError("CPW_API_STORE=postgresql needs CPW_POSTGRES_URL or CPW_POSTGRES_URL_FILE")
        self.dsn = settings.postgres_url
        self.retry_after = str(settings.api_retry_after)
        self.ready = False
        self.pool: Any = None
        self.ended = EndedJobs(self.dsn, DB_ERRORS, self.describe)
        self.reserved = Reservations()
        self.accepts = Accepts(lambda: self.pool, DB_ERRORS, self.describe)
        # tenant -> (loop time of the query, active jobs it found, this replica's accepts when it started)
        self.active: dict[str | None, tuple[float, int, int]] = {}

    async def open(self) -> None:
        """Connect, create the schema if the projector has not yet, listen for ended jobs."""
        # min_size=0: while PostgreSQL is away the pool does not log a traceback a second restoring a floor
        self.pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=10)
        async with self.pool.acquire() as conn:
            await migrate(conn)
        await self.ended.open()

    async def close(self) -> None:
        self.ready = False
        await self.ended.close()
        if self.pool is not None:
            with contextlib.suppress(*DB_ERRORS):
                await self.pool.close()

    def describe(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {redact_text(str(exc))} ({redact_url(self.dsn)})"

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        try:
            async with self.pool.acquire(timeout=5.0) as conn:
                yield conn
        except DB_ERRORS as exc:
            log.warning("operation store: %s", self.describe(exc))
            raise unavailable("The operation store is unavailable; retry later.", self.retry_after) from None

    async def _row(self, job_id: str) -> Any:
        async with self._conn() as conn:
            return await conn.fetchrow("SELECT * FROM cpw_jobs WHERE job_id = $1", job_id)

    async def get(self, job_id: str, tenant: str | None) -> JobResult | None:
        record = self.accepts.first_read(job_id)  # the submission's own answer: no round trip
        if record is not None:
            return record if tenant is None or record.tenant == tenant else None
        row = await self._row(job_id)
        if row is None or (tenant is not None and row["tenant"] != tenant):
            return None
        return _record(row)

    def miss_code(self, job_id: str) -> str:
        return "OperationNotFound"  # a job past CPW_OPERATION_RETENTION is gone with its day's partition

    async def wait(self, job_id: str, timeout: float) -> JobResult | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ended = self.ended.waiter(job_id)
            try:
                row = await self._row(job_id)  # after registering: a NOTIFY meanwhile is not missed
                if row is not None and row["terminal"]:
                    return _record(row)
                left = deadline - loop.time()
                if left <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended, min(left, RECHECK))
            finally:
                self.ended.forget(job_id, ended)

    async def active_count(self, tenant: str | None) -> int:
        """The tenant's queued and running jobs. The query's answer is reused for COUNT_FOR seconds, with
        this replica's accepts since it started added (jobs that ended meanwhile still count: the cap errs
        on the safe side); another replica's accepts are seen at the next query."""
        loop = asyncio.get_running_loop()
        cached = self.active.get(tenant)
        if cached is None or loop.time() - cached[0] > COUNT_FOR:
            started, accepts = loop.time(), self.accepts.by_tenant.get(tenant, 0)
            where = "tenant IS NULL" if tenant is None else "tenant = $1"
            async with self._conn() as conn:
                found = await conn.fetchval(
                    f"SELECT count(*) FROM cpw_jobs WHERE {where} AND NOT terminal",
                    *([] if tenant is None else [tenant]),
                )
            cached = self.active[tenant] = (started, int(found), accepts)
        return cached[1] + self.accepts.by_tenant.get(tenant, 0) - cached[2] + self.reserved.of(tenant)

    async def reserve(self, tenant: str | None, job_id: str, cap: int) -> bool:
        # The slot is taken before the query: concurrent submissions on this loop see each other's.
        self.reserved.take(job_id, tenant)
        try:
            if await self.active_count(tenant) > cap:
                self.release(job_id)
                return False
        except BaseException:
            self.release(job_id)
            raise
        return True

    def release(self, job_id: str) -> None:
        self.reserved.release(job_id)

    async def accepted(self, job: Job, idempotency: tuple[str, str] | None) -> None:
        """The job's Accepted row (pgaccept.py), unless the projector wrote it first. Never raises."""
        self.reserved.release(job.id)  # its slot now counts among the accepts (at once: no double count)
        await self.accepts.add(job, idempotency)

    async def idempotent(self, key: str) -> tuple[str, str, float] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT job_id, fingerprint, submitted_at FROM cpw_jobs WHERE idem_key = $1 "
                "ORDER BY job_id DESC LIMIT 1",
                key,
            )
        return None if row is None else (row["job_id"], row["fingerprint"], row["submitted_at"] or time.time())

    async def page(
        self, tenant: str | None, status: JobStatus | None, limit: int, after: str | None
    ) -> tuple[list[JobResult], str | None]:
        query, unless_own, args = page_queries(tenant, status, limit, after)
        async with self._conn() as conn:
            rows = await conn.fetch(query, *args)
            if not rows and unless_own is not None:  # rare: a token not the tenant's own, or nothing after it
                rows = await conn.fetch(unless_own, *args)
        records = [_record(row) for row in rows[:limit]]
        return records, (records[-1].job_id if len(rows) > limit else None)

    async def counts(self, tenant: str | None) -> dict[str, int]:
        counts = {s.value: 0 for s in JobStatus}
        where, args = ("WHERE tenant = $1", [tenant]) if tenant is not None else ("", [])
        async with self._conn() as conn:
            for row in await conn.fetch(f"SELECT status, count(*) AS n FROM cpw_jobs {where} GROUP BY status", *args):
                counts[row["status"]] = row["n"]
        return counts

    def info(self) -> dict[str, object]:
        pool = self.pool
        return {
            "store": "postgresql",
            "url": redact_url(self.dsn),
            "poolSize": 0 if pool is None else pool.get_size(),
            "listening": self.ended.listening,
            "waiters": len(self.ended.waiters),
            "acceptErrors": self.accepts.failed,
            "acceptInserts": self.accepts.inserts,
        }


async def open_with_backoff(store: PostgresStore, stop: asyncio.Event, cap: float = 10.0) -> bool:
    """`store.open()` until PostgreSQL answers; False if asked to stop first."""
    delay = 0.5
    while not stop.is_set():
        try:
            await store.open()
            return True
        except DB_ERRORS as exc:
            await store.close()
            log.warning("api: operation store unavailable, retrying in %.1fs: %s", delay, store.describe(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(cap, delay * 2)
    return False
