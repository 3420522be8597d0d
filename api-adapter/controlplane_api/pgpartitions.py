"""Daily partitions of `cpw_jobs`: made ahead, dropped past the retention (`CPW_OPERATION_RETENTION`).

The table is range-partitioned on `job_id` itself (collation "C"): an id from `new_job_id` starts with
its Unix milliseconds in 12 hex digits, so one UTC day of ids is one range of strings, a lookup by id
prunes to one partition, and keyset pages (`ORDER BY job_id DESC`) stay ordered across days. A row
whose day has no partition (a caller's own id, a clock far ahead, a late event for a dropped day)
lands in `cpw_jobs_default`; making its day's partition moves it there. Retention is a partition drop
plus a small sweep of the default partition: a job past it is gone (404 OperationNotFound).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg

from controlplane_workers.redact import redact_text

log = logging.getLogger("controlplane_api.projector")
DAY_MS = 86_400_000
AHEAD_DAYS = 2  # partitions exist for today and this many days after
MIGRATE_LOCK = 0x63707769 + 1  # pg_advisory_xact_lock key: one schema change at a time
PREFIX = "cpw_jobs_p"
DEFAULT = "cpw_jobs_default"
UPKEEP_EVERY = 600.0  # seconds between upkeeps (a day's partition is made AHEAD_DAYS ahead)


def day_of(at: float) -> int:
    """Days since the epoch (UTC) of a Unix time."""
    return int(at * 1000) // DAY_MS


def bound(day: int) -> str:
    """The first id of `day`: its millisecond in 12 hex digits (ids compare as "C" strings)."""
    return f"{day * DAY_MS:012x}"


def partition_name(day: int) -> str:
    return PREFIX + (dt.date(1970, 1, 1) + dt.timedelta(days=day)).strftime("%Y%m%d")


def _day_of_name(name: str) -> int:
    return (dt.datetime.strptime(name[len(PREFIX) :], "%Y%m%d").date() - dt.date(1970, 1, 1)).days


async def partition_days(conn: Any) -> list[int]:
    """The days that have a partition, oldest first."""
    names = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'cpw_jobs'::regclass AND c.relname LIKE 'cpw\\_jobs\\_p%'"
    )
    return sorted(_day_of_name(row["relname"]) for row in names)


async def add_days(conn: Any, days: Iterable[int]) -> list[int]:
    """Make the partitions of `days` that are missing, moving their rows out of the default partition.
    Call inside a transaction holding MIGRATE_LOCK."""
    have, made = set(await partition_days(conn)), []
    for day in sorted(set(days) - have):
        name, lo, hi = partition_name(day), bound(day), bound(day + 1)
        await conn.execute(f"CREATE TABLE {name} (LIKE cpw_jobs INCLUDING DEFAULTS)")
        await conn.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE job_id >= $1 AND job_id < $2 RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved",
            lo,
            hi,
        )
        await conn.execute(f"ALTER TABLE cpw_jobs ATTACH PARTITION {name} FOR VALUES FROM ('{lo}') TO ('{hi}')")
        made.append(day)
    return made


async def _locked(conn: Any) -> None:
    """The start of an upkeep transaction: one schema change at a time, and no wait on readers past 5 s."""
    await conn.execute("SET LOCAL lock_timeout = '5s'")  # a drop waits for the readers of the table
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)


async def upkeep(conn: Any, now: float, retention_days: int) -> tuple[list[int], list[int]]:
    """Partitions for today and AHEAD_DAYS more; drop the days wholly older than `now - retention`
    and the default partition's rows as old. The days made and dropped. Two transactions: the days
    ahead are made even when a drop fails (a reader past the lock timeout, a view on a partition)."""
    today, cutoff = day_of(now), now - retention_days * 86_400.0
    async with conn.transaction():
        await _locked(conn)
        made = await add_days(conn, range(today, today + AHEAD_DAYS + 1))
    async with conn.transaction():
        await _locked(conn)
        dropped = [day for day in await partition_days(conn) if (day + 1) * 86_400 <= cutoff]
        for day in dropped:
            await conn.execute(f"DROP TABLE {partition_name(day)}")
        await conn.execute(
            f"DELETE FROM {DEFAULT} WHERE job_id < $1 OR COALESCE(finished_at, started_at, submitted_at) < $2",
            f"{int(cutoff * 1000):012x}",
            cutoff,
        )
    return made, dropped


class Upkeep:
    """The active projector's upkeep schedule. A failed one (a drop waiting on readers past the lock timeout, a
    partition something else depends on) is logged once, counted by the caller, and tried again UPKEEP_EVERY
    later: the jobs keep being written meanwhile (rows of a day with no partition land in the default one)."""

    def __init__(self, retention_days: int, clock: Callable[[], float] = time.time) -> None:
        self.retention_days = retention_days
        self.clock = clock  # the wall clock that says which days to keep (tests pass another day's)
        self.next_upkeep = 0.0  # time.monotonic() of the next one
        self.failures = 0
        self.failing = False  # the last one failed: logged already

    def due(self) -> bool:
        return time.monotonic() >= self.next_upkeep

    def wait(self) -> float:
        """Seconds until the next one is due."""
        return max(0.0, self.next_upkeep - time.monotonic())

    async def run(self, conn: Any) -> bool:
        """One upkeep; False if PostgreSQL refused it (its transaction rolled back, the connection still usable).
        A connection lost meanwhile raises (asyncpg's InterfaceError): the projector ends, as its lock went."""
        self.next_upkeep = time.monotonic() + UPKEEP_EVERY
        try:
            made, dropped = await upkeep(conn, self.clock(), self.retention_days)
        except asyncpg.PostgresError as exc:
            self.failures += 1
            if not self.failing:
                self.failing = True
                log.error(
                    "indexer: partition upkeep failed, tried again every %ds (cpw_projector_upkeep_failures): %s: %s",
                    UPKEEP_EVERY,
                    type(exc).__name__,
                    redact_text(str(exc)),
                )
            return False
        if self.failing:
            self.failing = False
            log.warning("indexer: partition upkeep works again (%d failures since the start)", self.failures)
        if made or dropped:
            names = [partition_name(day) for day in made], [partition_name(day) for day in dropped]
            log.warning("indexer: partitions made %s, dropped %s (past the retention)", *names)
        return True
