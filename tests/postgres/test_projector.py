"""`cpw indexer` on a real RabbitMQ stream and a real PostgreSQL: exactly once across kills, monotonic
states, one active projector at a time."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane_api.projector import Projector
from controlplane_api.settings import load_api_settings
from controlplane_workers.broker import open_broker
from controlplane_workers.broker.base import KIND, REDRIVE, StreamMessage
from controlplane_workers.events import BATCH
from controlplane_workers.topology import Topology
from tests.api.support import Proc, _env, spawn, wait_ready
from tests.postgres.streams import oracle, script
from tests.support.rabbitmq import free_port

pytestmark = pytest.mark.rabbitmq
JOBS, PER_MESSAGE = 1200, 10  # ~4,800 events in ~480 stream messages


async def publish(url: str, messages: list) -> None:
    broker = open_broker(url, Topology())
    await broker.connect()
    try:
        for start in range(0, len(messages), 100):
            await broker.publish_events(messages[start : start + 100])
    finally:
        await broker.close()


def start_indexer(broker_url: str, pg: str, tmp: Path, name: str, batch: int = 1, **settings: object) -> Proc:
    ops_port = free_port()
    env = _env(
        broker_url,
        {
            "CPW_POSTGRES_URL": pg,
            "CPW_INDEXER_BATCH_MESSAGES": batch,
            "CPW_WORKER_ID": name,
            "CPW_HEALTH_PORT": ops_port,
            **settings,
        },
    )
    log = tmp / f"indexer-{name}.log"
    return Proc(spawn(["indexer"], env, log), log, 0, ops_port, env)


async def scrape(proc: Proc) -> dict[str, float]:
    """The projector's /metrics as {sample name with labels: value}."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        body = (await http.get(f"{proc.ops_url}/metrics")).text
    return {
        sample.name + (str(sorted(sample.labels.items())) if sample.labels else ""): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


async def applied(conn: asyncpg.Connection) -> int:
    found = await conn.fetchval("SELECT last_offset FROM cpw_projector")
    return -1 if found is None else found


async def until(check, timeout: float = 30.0, every: float = 0.005):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(every)
    return found


async def active_projector(conn: asyncpg.Connection) -> str | None:
    return await conn.fetchval(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = $1",
        0x63707769,
    )


async def assert_matches_oracle(conn: asyncpg.Connection, messages: list) -> None:
    """Every job as the status index has it, every event applied once, every duplicate counted once."""
    index = oracle(messages)
    rows = {r["job_id"]: r for r in await conn.fetch("SELECT * FROM cpw_jobs")}
    assert len(rows) == len(index)
    for job_id in index:
        want, row = index.get(job_id), rows[job_id]
        assert want is not None
        assert (row["status"], row["attempts"], row["tenant"], row["finished_at"]) == (
            want.status.value,
            want.attempts,
            want.tenant,
            want.finished_at,
        ), job_id
    assert sum(r["duplicates"] for r in rows.values()) == index.duplicates > 0
    state = await conn.fetchrow("SELECT last_offset, events, malformed FROM cpw_projector")
    assert (state["last_offset"], state["events"], state["malformed"]) == (len(messages) - 1, index.events, 0)


async def kill_mid_stream(proc: Proc, conn: asyncpg.Connection, final: int) -> int:
    """SIGKILL `proc` once it has applied part of the stream; the offset it had stored."""
    await until(lambda: _past(conn, final // 4))
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(5)
    # A COMMIT the process sent just before it died is still carried out by its PostgreSQL backend, in the
    # backend's own time: read the offset once that backend has gone, and nothing more can be stored after it.
    await until(lambda: _backend_gone(conn, f"cpw-indexer {proc.env['CPW_WORKER_ID']}"), every=0.02)
    at = await applied(conn)
    assert 0 <= at < final, "the kill must land mid-stream"
    return at


async def _backend_gone(conn: asyncpg.Connection, name: str) -> bool:
    return not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name)


async def _holds(conn: asyncpg.Connection, name: str) -> bool:
    return await active_projector(conn) == name


async def _past(conn: asyncpg.Connection, offset: int) -> bool:
    return await applied(conn) >= offset


async def test_exactly_once_across_a_kill_and_restart(vhost_url, pg_url, tmp_path):
    messages = script(JOBS, PER_MESSAGE)
    await publish(vhost_url, messages)
    conn = await asyncpg.connect(pg_url)
    first = start_indexer(vhost_url, pg_url, tmp_path, "first")
    try:
        await until(lambda: conn.fetchval("SELECT to_regclass('cpw_projector') IS NOT NULL"), every=0.05)
        killed_at = await kill_mid_stream(first, conn, len(messages) - 1)
        second = start_indexer(vhost_url, pg_url, tmp_path, "second", batch=256)
        started = time.monotonic()
        await until(lambda: _past(conn, len(messages) - 1))
        elapsed = time.monotonic() - started
        second.stop()
        print(f"\nprojector: killed at offset {killed_at}; the rest in {elapsed:.2f}s (incl. start)")
        assert f"resuming provider.results after offset {killed_at}" in second.output()
        await assert_matches_oracle(conn, messages)
    finally:
        first.stop()
        await conn.close()


async def test_standby_takes_over_when_the_active_one_dies(vhost_url, pg_url, tmp_path):
    messages = script(JOBS, PER_MESSAGE, seed=11)
    conn = await asyncpg.connect(pg_url)
    active = start_indexer(vhost_url, pg_url, tmp_path, "one")
    standby: Proc | None = None
    try:
        await until(lambda: active_projector(conn), every=0.05)
        standby = start_indexer(vhost_url, pg_url, tmp_path, "two")
        await until(lambda: asyncio.sleep(0, "standby" in standby.output()), every=0.05)
        assert await active_projector(conn) == "cpw-indexer one"
        await publish(vhost_url, messages)
        await kill_mid_stream(active, conn, len(messages) - 1)
        killed = time.monotonic()
        # Until the standby holds the lock, not until anyone does: the killed one's backend releases it as it
        # exits, in its own time after the client died, so a first look may still find it holding the lock.
        await until(lambda: _holds(conn, "cpw-indexer two"), every=0.02)
        took_over = time.monotonic() - killed
        assert took_over < 3.0, took_over
        print(f"\nstandby active {took_over:.2f}s after the kill")
        await until(lambda: _past(conn, len(messages) - 1))
        await assert_matches_oracle(conn, messages)
    finally:
        active.stop()
        if standby is not None:
            standby.stop()
        await conn.close()


def message(offset: int, *events: dict, headers: dict | None = None) -> StreamMessage:
    return StreamMessage(orjson.dumps(list(events)), {KIND: BATCH, **(headers or {})}, offset)


async def test_states_only_move_forward(pg_url):
    settings = load_api_settings(postgres_url=pg_url)
    projector = Projector(settings)
    conn = await asyncpg.connect(pg_url)
    from controlplane_api.pgschema import migrate

    await migrate(conn)
    await conn.execute("INSERT INTO cpw_projector (stream, last_offset) VALUES ('provider.results', -1)")

    def ev(job: str, kind: str, at: float, **more: object) -> dict:
        return {"job_id": job, "type": kind, "at": at, **more}

    # a: ends, then a late Running in a later batch; b: two ends in one batch, then a third later;
    # c: ends in the same batch as a late Running; d: redriven after it failed, starts afresh.
    await projector.apply(conn, [message(0, ev("a", "running", 1), ev("a", "succeeded", 2), ev("b", "failed", 3))])
    await projector.apply(conn, [message(1, ev("b", "succeeded", 4), ev("b", "canceled", 5), ev("a", "running", 6))])
    await projector.apply(conn, [message(2, ev("c", "succeeded", 7), ev("c", "running", 8), ev("d", "failed", 9))])
    job_d = {"id": "d", "provider_namespace": "N", "resource_type": "t", "operation": "create", "request": {}}
    redrive = StreamMessage(orjson.dumps(job_d), {KIND: "job", REDRIVE: True}, 3)
    await projector.apply(conn, [redrive, message(4, ev("d", "running", 10))])
    await projector.apply(conn, [message(2, ev("c", "failed", 11))])  # delivered again: skipped by its offset
    rows = {
        r["job_id"]: (r["status"], r["duplicates"], r["finished_at"])
        for r in await conn.fetch("SELECT * FROM cpw_jobs")
    }
    assert rows == {
        "a": ("Succeeded", 0, 2.0),
        "b": ("Failed", 2, 3.0),
        "c": ("Succeeded", 0, 7.0),
        "d": ("Running", 0, None),
    }
    assert await conn.fetchval("SELECT redrives FROM cpw_jobs WHERE job_id = 'd'") == 1
    assert await conn.fetchval("SELECT last_offset FROM cpw_projector") == 4
    await conn.close()


async def test_a_projector_that_loses_its_connection_exits_rather_than_write_without_the_lock(
    vhost_url, pg_url, tmp_path
):
    conn = await asyncpg.connect(pg_url)
    proc = start_indexer(vhost_url, pg_url, tmp_path, "cut")
    try:
        await until(lambda: active_projector(conn), every=0.05)
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'cpw-indexer cut'"
        )
        assert proc.proc.wait(5) == 1, proc.output()
        assert "lost the PostgreSQL connection" in proc.output()
    finally:
        proc.stop()
        await conn.close()


async def test_metrics_and_readiness_of_the_leader_and_the_standby_across_a_failover(vhost_url, pg_url, tmp_path):
    """Both pods Ready (a standby counts for rollouts and PDBs); exactly one says leader, and the standby says so
    once it took over, with a failover counted and the events it wrote."""
    messages = script(40, PER_MESSAGE, seed=5)
    conn = await asyncpg.connect(pg_url)
    one = start_indexer(vhost_url, pg_url, tmp_path, "m-one")
    two: Proc | None = None
    try:
        await wait_ready(one, f"{one.ops_url}/health/ready")
        assert await active_projector(conn) == "cpw-indexer m-one"
        two = start_indexer(vhost_url, pg_url, tmp_path, "m-two")
        await wait_ready(two, f"{two.ops_url}/health/ready")
        await publish(vhost_url, messages)
        await until(lambda: _past(conn, len(messages) - 1))
        first, second = await scrape(one), await scrape(two)
        assert (first["cpw_projector_leader"], second["cpw_projector_leader"]) == (1.0, 0.0)
        assert first["cpw_projector_postgres_connected"] == second["cpw_projector_postgres_connected"] == 1.0
        assert first["cpw_projector_events_total"] == oracle(messages).events
        assert first["cpw_projector_applied_offset"] == len(messages) - 1
        assert first["cpw_projector_transactions_total"] == first["cpw_projector_batch_duration_seconds_count"] >= 1
        assert first["cpw_projector_batch_messages_sum"] == len(messages)
        assert first["cpw_projector_commit_delay_seconds_count"] == first["cpw_projector_transactions_total"]
        assert first["cpw_projector_lag_seconds"] == 0.0 and first["cpw_projector_malformed_total"] == 0.0
        assert first["cpw_projector_failovers_total"] == second["cpw_projector_failovers_total"] == 0.0
        assert second["cpw_projector_events_total"] == 0.0
        async with httpx.AsyncClient(timeout=5.0) as http:
            standby = (await http.get(f"{two.ops_url}/status")).json()
        assert standby["role"] == "standby" and standby["ready"] is True

        os.kill(one.proc.pid, signal.SIGKILL)
        one.proc.wait(5)
        await until(lambda: _scraped(two, "cpw_projector_leader", 1.0), every=0.05)
        # It says leader as it takes the lock, two PostgreSQL round trips before it reads the stored offset;
        # Ready (leader and following) comes after that read, so the scrape below cannot fall between them.
        await wait_ready(two, f"{two.ops_url}/health/ready")
        after = await scrape(two)
        assert after["cpw_projector_failovers_total"] == 1.0
        assert after["cpw_projector_applied_offset"] == len(messages) - 1  # resumed after the stored offset
        assert after["cpw_projector_events_total"] == 0.0  # nothing written twice
        more = script(5, PER_MESSAGE, seed=6)
        await publish(vhost_url, more)
        await until(lambda: _past(conn, len(messages) + len(more) - 1))
        await until(lambda: _scraped(two, "cpw_projector_events_total", float(oracle(more).events)), every=0.05)
    finally:
        one.stop()
        if two is not None:
            two.stop()
        await conn.close()


async def _scraped(proc: Proc, name: str, value: float) -> bool:
    return (await scrape(proc)).get(name) == value


async def test_a_taken_ops_port_stops_the_indexer_before_it_takes_the_lock(vhost_url, pg_url, tmp_path):
    first = start_indexer(vhost_url, pg_url, tmp_path, "port-one")
    try:
        await wait_ready(first, f"{first.ops_url}/health/ready")
        env = {**first.env, "CPW_WORKER_ID": "port-two"}
        log = tmp_path / "indexer-port-two.log"
        second = Proc(spawn(["indexer"], env, log), log)
        assert second.proc.wait(20) == 2, second.output()
        assert "the ops port (CPW_HEALTH_PORT)" in second.output()
    finally:
        first.stop()
