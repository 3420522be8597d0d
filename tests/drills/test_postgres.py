"""Drills of the PostgreSQL operation store (CPW_API_STORE=postgresql) on real processes: two `cpw api`,
workers, an active and a standby `cpw indexer`, a PostgreSQL of the module's own, load over HTTP.

- kill -9 the active projector mid-stream: the standby takes over;
- stop PostgreSQL for ~5 s under load: the APIs answer 503 + Retry-After meanwhile, nothing is lost.

The harness's account (what clients saw: lost, two outcomes) plus the projection's own: every job's
row in PostgreSQL equals the status index read from the whole results stream, and the projector's
`events` equals the stream's (an event applied twice would count twice). `[small]` runs in
`make test`, `[full]` (marked `drill`) in `make drill`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from controlplane_workers.broker import open_broker
from controlplane_workers.broker.base import StreamMessage
from controlplane_workers.status import StatusIndex
from controlplane_workers.topology import Topology
from tests.api.support import Proc
from tests.drills.harness import Account, Cluster, Load, drill
from tests.postgres.test_projector import active_projector, start_indexer
from tests.support.postgres import PostgresServer, installed

SIZES = [pytest.param("small", id="small"), pytest.param("full", id="full", marks=pytest.mark.drill)]


def sized(size: str, small, full):  # noqa: ANN001, ANN201
    return small if size == "small" else full


@dataclass
class PgAccount:
    """One drill's line: the harness's account, the answers the APIs gave, the projection's check."""

    name: str
    account: Account
    api_503: int = 0  # 503 + Retry-After answers (reads and submissions) while PostgreSQL was away
    bare_503: int = 0  # 503 without Retry-After: must stay 0
    api_5xx: int = 0  # any other 5xx: must stay 0
    rows_off: int = 0  # jobs whose row differs from the stream's status index
    applied_twice: int = 0  # events the projector counted past the stream's
    took_over_s: float = 0.0

    @property
    def duplicates(self) -> int:
        return self.account.duplicates + self.applied_twice

    def line(self) -> str:
        a = self.account
        return (
            f"pg-drill {self.name}: accepted={a.accepted} terminal={a.terminal} lost={a.lost} "
            f"duplicates={self.duplicates} max_recovery_s={a.max_recovery_s:.1f} api_503={self.api_503} "
            f"rows_off={self.rows_off} api_5xx={self.api_5xx + self.bare_503} orphans={a.orphans} "
            f"took_over_s={self.took_over_s:.1f} "
            f"load={a.rate:.0f}/s for {a.duration_s:.0f}s"
        )


PG_RESULTS: list[PgAccount] = []


def pg_summary(accounts: list[PgAccount]) -> str:
    """The `pg-drill:` line, as `drill:` and `cluster-drill:` are for theirs."""
    total = lambda attr: sum(getattr(a.account, attr) for a in accounts)  # noqa: E731
    worst = max((a.account.max_recovery_s for a in accounts), default=0.0)
    return (
        f"pg-drill: accepted={total('accepted')} terminal={total('terminal')} lost={total('lost')} "
        f"duplicates={sum(a.duplicates for a in accounts)} max_recovery_s={worst:.1f} "
        f"api_503={sum(a.api_503 for a in accounts)}"
    )


class CountingLoad(Load):
    """The harness's load, counting the APIs' 5xx answers by kind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_503 = self.bare_503 = self.other_5xx = 0
        self.odd: list[str] = []  # the first 5xx answers that are not 503 + Retry-After, for the failure message

    async def request(self, method: str, url: str, **kwargs: Any) -> tuple[int, Mapping[str, str], str] | None:
        answer = await super().request(method, url, **kwargs)
        if answer is not None and answer[0] >= 500:
            if answer[0] == 503 and answer[1].get("Retry-After"):
                self.retry_503 += 1
                return answer
            if answer[0] != 503:
                self.other_5xx += 1
            else:
                self.bare_503 += 1
            if len(self.odd) < 5:
                self.odd.append(f"{method} {url}: {answer[0]} {answer[2][:300]}")
        return answer


@dataclass
class Indexers:
    """`cpw indexer` processes kept at `count`, as a Deployment would: one that exits is started again."""

    broker_url: str
    pg_url: str
    tmp: Path
    count: int = 2
    procs: list[Proc] = field(default_factory=list)
    started: int = 0

    def start_one(self) -> Proc:
        self.started += 1
        proc = start_indexer(self.broker_url, self.pg_url, self.tmp, f"ix{self.started}", batch=32)
        self.procs.append(proc)
        return proc

    def live(self) -> list[Proc]:
        return [p for p in self.procs if p.proc.poll() is None]

    async def keep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for _ in range(self.count - len(self.live())):
                self.start_one()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)  # a pod's restart delay, roughly
            except TimeoutError:
                pass

    def proc_of(self, name: str) -> Proc:
        return next(p for p in self.procs if p.log.name == f"indexer-{name.removeprefix('cpw-indexer ')}.log")

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop(timeout=10)


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    if not installed():
        pytest.skip("PostgreSQL 15 is not installed: run `make system-deps`")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def pg_db(pg_server: PostgresServer) -> AsyncIterator[str]:
    if not (pg_server.data / "postmaster.pid").exists():  # a failed drill may have left it stopped
        pg_server.start()
    name = f"d_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_server.url())
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    yield pg_server.url(name)


async def until(check, timeout: float = 60.0, every: float = 0.05):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(every)
    return found


async def stream_index(broker_url: str, last: int) -> StatusIndex:
    """The status index of the results stream's messages up to offset `last`: the oracle."""
    received: list[StreamMessage] = []
    done = asyncio.Event()

    def handler(messages: Any) -> None:
        received.extend(messages)
        if received and received[-1].offset >= last:
            done.set()

    broker = open_broker(broker_url, Topology())
    await broker.connect()
    try:
        subscription = await broker.follow(Topology().results_stream, handler, 0)
        await asyncio.wait_for(done.wait(), 60)
        await subscription.cancel()
    finally:
        await broker.close()
    index = StatusIndex()
    index.apply_batch(sorted((m for m in received if m.offset <= last), key=lambda m: m.offset))
    return index


async def check_projection(pg: PgAccount, broker_url: str, pg_url: str, accepted: set[str]) -> None:
    """Wait for the projector to be idle, then compare every row with the stream's status index."""
    conn = await asyncpg.connect(pg_url)
    try:
        last = -2
        while (now := await conn.fetchval("SELECT last_offset FROM cpw_projector")) != last:
            last = now
            await asyncio.sleep(1.0)  # idle = no new offset in a second (the load has ended)
        index = await stream_index(broker_url, last)
        rows = {r["job_id"]: r for r in await conn.fetch("SELECT * FROM cpw_jobs")}
        events = await conn.fetchval("SELECT events FROM cpw_projector")
    finally:
        await conn.close()
    for job_id in set(index) | accepted:
        want, row = index.get(job_id), rows.get(job_id)
        same = (
            want is not None
            and row is not None
            and (row["status"], row["attempts"], row["finished_at"])
            == (want.status.value, want.attempts, want.finished_at)
        )
        pg.rows_off += not same
    pg.rows_off += sum(r["duplicates"] for r in rows.values()) != index.duplicates
    pg.applied_twice = max(0, events - index.events)
    assert events == index.events, (events, index.events)


async def pg_drill(
    name: str, c: Cluster, load: CountingLoad, faults: Any, pg_url: str, settle_s: float, took_over: list[float]
) -> PgAccount:
    account = await drill(f"pg {name}", c, load, faults, settle_s=settle_s)
    pg = PgAccount(name, account, load.retry_503, load.bare_503, load.other_5xx)
    pg.took_over_s = max(took_over, default=0.0)
    await check_projection(pg, c.url, pg_url, {r.job_id for r in load.records if r.job_id})
    PG_RESULTS.append(pg)
    print(pg.line())
    assert pg.rows_off == 0 and pg.api_5xx == 0 and pg.bare_503 == 0 and pg.duplicates == 0, (pg.line(), load.odd)
    # A job no client holds: a submission published but answered 503, then retried into a second job.
    assert account.orphans == 0, pg.line()
    return pg


async def start(cluster, pg_url: str, tmp: Path) -> tuple[Cluster, Indexers]:  # noqa: ANN001
    api = {"CPW_API_STORE": "postgresql", "CPW_POSTGRES_URL": pg_url}
    c = await cluster(workers=2, api_settings=api)
    indexers = Indexers(c.url, pg_url, tmp)
    indexers.start_one()
    conn = await asyncpg.connect(pg_url)
    try:
        await until(lambda: active_projector(conn))
    finally:
        await conn.close()
    indexers.start_one()  # the standby
    return c, indexers


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(400)
async def test_kill_9_the_active_projector(size, cluster, pg_db, tmp_path):
    c, indexers = await start(cluster, pg_db, tmp_path)
    rate, duration, kills = sized(size, (30, 8, 1), (60, 45, 3))
    load = CountingLoad(c, rate=rate, count=int(rate * duration), duration=duration, script=lambda n: "sleep:0.1")
    stop = asyncio.Event()
    keeper = asyncio.create_task(indexers.keep(stop))
    took_over: list[float] = []

    async def faults(load: Load) -> None:
        conn = await asyncpg.connect(pg_db)
        try:
            for i in range(kills):
                await asyncio.sleep(duration / (kills + 1))
                active = await until(lambda: active_projector(conn))
                victim = indexers.proc_of(active)
                os.kill(victim.proc.pid, signal.SIGKILL)
                killed = time.monotonic()
                c.note(f"kill -9 {active}")
                load.recoveries.append(("projector", time.time()))
                await asyncio.to_thread(victim.proc.wait, 10)
                successor = await until(lambda: _other(conn, active), every=0.02)
                took_over.append(time.monotonic() - killed)
                c.note(f"{successor} active")
        finally:
            await conn.close()

    try:
        pg = await pg_drill("projector kill -9", c, load, faults, pg_db, sized(size, 40, 120), took_over)
    finally:
        stop.set()
        await keeper
        indexers.stop()
    # The standby polls the lock every 0.5 s; a loaded 2-core machine adds seconds (tests/postgres has the
    # idle bound, 3 s).
    assert len(took_over) == kills and pg.took_over_s < 10.0, took_over


async def _other(conn: asyncpg.Connection, old: str) -> str | None:
    found = await active_projector(conn)
    return found if found not in (None, old) else None


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(400)
async def test_restart_postgres_under_load(size, cluster, pg_server, pg_db, tmp_path):
    c, indexers = await start(cluster, pg_db, tmp_path)
    rate, duration, outage = sized(size, (30, 12, 5.0), (60, 45, 5.0))
    load = CountingLoad(c, rate=rate, count=int(rate * duration), duration=duration, script=lambda n: "sleep:0.1")
    stop = asyncio.Event()
    keeper = asyncio.create_task(indexers.keep(stop))

    async def faults(load: Load) -> None:
        await asyncio.sleep(sized(size, 3.0, 15.0))
        c.note("postgres stop")
        await asyncio.to_thread(pg_server.stop)
        await asyncio.sleep(outage)  # the outage itself
        await asyncio.to_thread(pg_server.start)
        c.note("postgres up")
        load.recoveries.append(("postgres", time.time()))

    try:
        pg = await pg_drill("postgres restart", c, load, faults, pg_db, sized(size, 60, 120), [])
    finally:
        stop.set()
        await keeper
        indexers.stop()
    assert pg.api_503 > 0, "the outage must have been seen: 503 + Retry-After"
