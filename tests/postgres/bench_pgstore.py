"""PostgreSQL operation store benchmark (issue 19): one line,

    pgstore: jobs=1000000 api_ready_s=T api_rss_mib=R projector_events_per_s=E lag_p99_ms=L list_p99_ms=P http_jobs_per_s=H
             stream_http_jobs_per_s=S http_ratio=H/S

a second with what stands behind it (bytes per row, ...), and a third with every round's raw number.

Run: .venv/bin/python -m pytest tests/postgres/bench_pgstore.py -m bench -s -o addopts="" (part of `make bench`;
CPW_BENCH_PG_JOBS, default 1000000). How each number is taken:
- api_ready_s, api_rss_mib, list_p99_ms: the rows are loaded with COPY straight into `cpw_jobs` (spread over
  ten daily partitions, 90% one tenant's): the API reads rows, so how they got there does not matter, and
  projecting a million jobs first would take most of the run. Ready = spawn to /health/ready; RSS after the
  list runs, next to the same process on the empty store. list: wrk, one connection, `GET /jobs` first
  page (100 jobs) and a page deep in the tenant's jobs with a status filter (skipToken), after a 1 s
  warm-up of each, in LIST_ROUNDS rounds of LIST_SECONDS each; list_p99_ms is the worse of the two
  pages' median round p99. In the same rounds, a control: the first page of another API over a table of
  SMALL rows (list_small_table_p99_ms). Every round's p99 is printed, with the share of its time the
  machine had more runnable tasks than cores (/proc/pressure/cpu): on a shared machine that moves the
  p99 of both tables alike; what a million rows cost is the gap between them.
- projector_events_per_s: N finished jobs (an Accepted and a Succeeded record each, 256 events per stream
  message) published to a real stream first, then one `cpw indexer` process projects them into the table
  of a million rows; events / (last applied - first applied).
- lag_p99_ms: 500 jobs/s (a message of 5 jobs' Accepted + Succeeded every 10 ms) published while that
  projector follows; a job's lag = its publish to the projector's NOTIFY of it ended (the row committed).
- http_jobs_per_s: bench_http's end to end (3,000 PUTs, 64 in flight, until /stats counts them
  Succeeded) with one API and one worker, on PostgreSQL (+ one projector, a fresh database), and
  stream_http_jobs_per_s the same in stream-index mode: HTTP_ROUNDS rounds of each, alternating (stream
  first, then PostgreSQL first, ...), the medians compared. One run of each, one after the other,
  compared whatever else the machine ran in each half (0.69 in one run, 1.12 in another). Beside them,
  the CPU per job of the processes serving the jobs (http_cpu_ratio: stream's / PostgreSQL's), which
  what a round gets of the shared cores hardly moves.
Goals: ready <= 2 s and RSS within 20 MiB of the empty store's at 1,000,000 jobs; projector >= 3x the SDK
path's completed jobs/s (docs/benchmarks.md, 1,838) in events; lag p99 <= 250 ms at 500 jobs/s; list p99
<= 50 ms; HTTP jobs/s >= 0.8x the stream mode's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from pathlib import Path

import asyncpg
import orjson
import pytest

from controlplane_api.pgpartitions import MIGRATE_LOCK, add_days, day_of
from controlplane_api.pgschema import CHANNEL, migrate
from controlplane_api.projection import COLUMNS
from controlplane_workers.broker import open_broker
from controlplane_workers.broker.base import KIND
from controlplane_workers.events import BATCH
from controlplane_workers.ids import new_job_id
from controlplane_workers.topology import Topology
from tests.api.bench_http import end_to_end, percentiles, wrk
from tests.api.bench_index import fill
from tests.api.support import start_api, start_worker, wait_ready
from tests.postgres.test_projector import start_indexer
from tests.support.postgres import PostgresServer
from tests.support.proc import cpu_seconds, rss_bytes

pytestmark = [pytest.mark.bench, pytest.mark.rabbitmq, pytest.mark.timeout(3600)]
JOBS = int(os.environ.get("CPW_BENCH_PG_JOBS", "1000000"))
PROJECTED = int(os.environ.get("CPW_BENCH_PG_PROJECTED", "100000"))  # jobs (2 events each) for the projector
DAYS = 10
LIST_ROUNDS, LIST_SECONDS = 5, 3  # GET /jobs: rounds of each page, seconds of wrk each
SMALL = 1000  # rows of the list's control table
HTTP_ROUNDS = 5  # end-to-end HTTP: rounds of each mode, alternating
SDK_JOBS_PER_S = 1838  # docs/benchmarks.md: the SDK path's completed jobs/s, median
# One tenant at full speed: the benchmark measures the store, not the per-tenant limits.
QUIET = {"CPW_LOG_LEVEL": "ERROR", "CPW_API_TENANT_MAX_QUEUED": 10_000_000, "CPW_API_TENANT_RATE": 0}
GET = 'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer token-a"\n'


async def new_database(server: PostgresServer) -> str:
    name = f"b_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server.url())
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    return server.url(name)


def rows(jobs: int, now: float):  # noqa: ANN201
    """`jobs` finished rows over the last DAYS days, oldest first; 90% tenant-a, 0.1% still running."""
    result = orjson.dumps({"name": "vm", "type": "Demo.Compute/virtualMachines", "properties": {"vmSize": "D2"}})
    for i in range(jobs):
        at = now - DAYS * 86_400 * (1 - i / jobs)
        running = i % 1000 == 0
        row = {
            "job_id": new_job_id(at), "status": "Running" if running else "Succeeded", "terminal": not running,
            "namespace": "Demo.Compute", "resource_type": "virtualMachines", "operation": "create",
            "resource_name": f"vm{i}", "tenant": "tenant-b" if i % 10 == 0 else "tenant-a", "priority": 5,
            "attempts": 1, "worker_id": "w-1", "submitted_at": at, "started_at": at + 0.1,
            "finished_at": None if running else at + 0.5, "result": None if running else result.decode(),
            "duplicates": 0, "redrives": 0,
        }  # fmt: skip
        yield tuple(row.get(column) for column in COLUMNS)  # by name: a new column is NULL, not a shifted value


async def load_rows(dsn: str, jobs: int) -> tuple[float, int]:
    """COPY `jobs` rows in; (seconds, bytes of the table and its indexes)."""
    now = time.time()
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            await add_days(conn, range(day_of(now) - DAYS, day_of(now) + 1))
        started = time.perf_counter()
        chunk: list[tuple] = []
        for row in rows(jobs, now):
            chunk.append(row)
            if len(chunk) == 50_000:
                await conn.copy_records_to_table("cpw_jobs", records=chunk, columns=COLUMNS)
                chunk = []
        if chunk:
            await conn.copy_records_to_table("cpw_jobs", records=chunk, columns=COLUMNS)
        await conn.execute("VACUUM ANALYZE cpw_jobs")
        seconds = time.perf_counter() - started
        size = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits WHERE inhparent = 'cpw_jobs'::regclass"
        )
    finally:
        await conn.close()
    return seconds, int(size)


async def timed_api(vhost_url: str, tmp_path, **env):  # noqa: ANN001, ANN003, ANN201
    started = time.perf_counter()
    api = await start_api(vhost_url, tmp_path, ready=False, **QUIET, **env)
    await wait_ready(api, f"{api.ops_url}/health/ready", timeout=120)
    return api, time.perf_counter() - started


async def projector_rate(vhost_url: str, dsn: str, tmp_path) -> tuple[float, object]:  # noqa: ANN001
    """Events/s of one `cpw indexer` catching up with PROJECTED finished jobs already on the stream."""
    await fill(vhost_url, PROJECTED)
    indexer = start_indexer(vhost_url, dsn, tmp_path, "bench", batch=32)
    conn = await asyncpg.connect(dsn)
    try:
        target, first = 2 * PROJECTED, None
        while True:
            events = await conn.fetchval("SELECT events FROM cpw_projector") or 0
            if first is None and events > 0:
                first = (time.perf_counter(), events)
            if events >= target:
                break
            assert indexer.proc.poll() is None, indexer.output()[-2000:]
            await asyncio.sleep(0.05)  # a progress counter in a table: nothing to await
        assert first is not None
        return (events - first[1]) / (time.perf_counter() - first[0]), indexer
    finally:
        await conn.close()


async def lag_p99(vhost_url: str, dsn: str, rate: int = 500, seconds: float = 10.0) -> tuple[float, int]:
    """p99 ms from a job's publish to the projector's NOTIFY of it ended, at `rate` jobs/s; (p99, jobs)."""
    sent: dict[str, float] = {}
    lags: list[float] = []
    everything = asyncio.Event()

    def ended(_c: object, _p: int, _ch: str, payload: str) -> None:
        now = time.perf_counter()
        for job_id in payload.split(","):
            if job_id in sent:
                lags.append(now - sent.pop(job_id))
        if not sent and done_publishing:
            everything.set()

    listener = await asyncpg.connect(dsn)
    await listener.add_listener(CHANNEL, ended)
    publisher = open_broker(vhost_url, Topology(), name="bench-lag")
    await publisher.connect()
    done_publishing = False
    try:
        per_tick, tick = 5, 5 / rate
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n in range(int(seconds / tick)):
            await asyncio.sleep(max(0.0, start + n * tick - loop.time()))  # the offered load's pacing
            events, now = [], time.time()
            for _ in range(per_tick):
                job_id = new_job_id()
                job = {"id": job_id, "provider_namespace": "N", "resource_type": "t", "operation": "create",
                       "request": {"resource_name": "r"}, "tenant": "tenant-a", "submitted_at": now}  # fmt: skip
                events.append(orjson.dumps({"job_id": job_id, "type": "accepted", "at": now, "job": job}))
                events.append(orjson.dumps({"job_id": job_id, "type": "succeeded", "at": now, "attempt": 1}))
                sent[job_id] = time.perf_counter()
            await publisher.publish_events([(b"[" + b",".join(events) + b"]", {KIND: BATCH})])
        done_publishing = True
        if sent:
            await asyncio.wait_for(everything.wait(), 60)
    finally:
        await publisher.close()
        await listener.close()
    lags.sort()
    return 1000 * lags[min(len(lags) - 1, int(len(lags) * 0.99))], len(lags)


def cpu_wait_s() -> float:
    """Seconds, so far, in which some task on this machine waited for a CPU (/proc/pressure/cpu "some"):
    its growth over a measurement says how much of its time the machine was busier than its cores."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            return int(pressure.readline().split("total=")[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return float("nan")  # a kernel without PSI: the field reads nan


async def list_p99(urls: dict[str, str], tmp_path, rounds: int = LIST_ROUNDS) -> dict[str, list[float]]:  # noqa: ANN001
    """wrk's p99 ms of each of `urls` (name -> a `GET /jobs` URL), in `rounds` rounds of LIST_SECONDS each
    (each round in another order: none always goes first) after a 1 s warm-up of each (the pool's
    connection, the prepared statements, the partitions' pages), and each round's share of time the
    machine had more runnable tasks than cores. One connection: a latency, not a throughput (more would
    queue behind each other in the one process). Rounds, not one long run: a burst of another process's
    load on a shared machine lands in one round and shows there, next to its CPU wait."""
    script = tmp_path / "get.lua"
    script.write_text(GET)
    found: dict[str, list[float]] = {"rate": [], "cpu_wait": []}
    for name, url in urls.items():
        _, out = wrk(url, str(script), seconds=1, connections=1)
        found[f"warmup_{name}"] = [percentiles(out)["99"] * 1000]
    names = list(urls)
    for n in range(rounds):
        waited, started = cpu_wait_s(), time.perf_counter()
        for name in names[n % len(names) :] + names[: n % len(names)]:
            rate, out = wrk(urls[name], str(script), seconds=LIST_SECONDS, connections=1)
            found.setdefault(name, []).append(percentiles(out)["99"] * 1000)
            found["rate"].append(rate)
        found["cpu_wait"].append((cpu_wait_s() - waited) / (time.perf_counter() - started))
    return found


async def deep_token(dsn: str) -> str:
    """A skipToken 400,000 jobs deep into tenant-a's."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT job_id FROM cpw_jobs WHERE tenant = 'tenant-a' ORDER BY job_id DESC OFFSET 400000 LIMIT 1"
        )
    finally:
        await conn.close()


def charged_cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes, their live descendants and their reaped ones (PostgreSQL's ended
    backends: the postmaster's cutime and cstime)."""
    total = 0.0
    for pid in pids:
        total += cpu_seconds(pid)
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return total


async def http_rate(vhost_url: str, tmp_path, servers: list[int], n: int = 3000, **env) -> tuple[float, float]:  # noqa: ANN001, ANN003
    """(jobs/s, CPU seconds per job of the API, the worker, the `servers`: broker, PostgreSQL, projector)."""
    api = await start_api(vhost_url, tmp_path, **QUIET, **env)
    worker = await start_worker(vhost_url, tmp_path, CPW_MAX_CONCURRENT_JOBS=200, CPW_LOG_LEVEL="ERROR")
    pids = [api.proc.pid, worker.proc.pid, *servers]
    try:
        before = charged_cpu_s(pids)
        seconds, _ = await end_to_end(api.url, n)
        used = charged_cpu_s(pids) - before
    finally:
        worker.stop()
        api.stop()
    return n / seconds, used / n


async def http_rounds(rabbitmq, postgres, tmp_path, rounds: int = HTTP_ROUNDS) -> dict[str, list[float]]:  # noqa: ANN001
    """End-to-end HTTP jobs/s of the stream-index mode and of the PostgreSQL mode (+ its projector), in
    alternating rounds (stream, pg, then pg, stream, ...), each on a fresh vhost (and database): the two
    modes meet the same background load on average, where one run of each after the other compared
    whatever else the machine ran in each half. And the CPU each job cost the processes that serve it
    (API, worker, broker, and in the PostgreSQL mode PostgreSQL and the projector): what a round gets of
    a shared machine's cores moves its jobs/s, hardly its CPU per job."""
    server = rabbitmq.server  # None for an external broker: its CPU is not charged
    broker = [server.process.pid] if server is not None and server.process else []
    postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
    found: dict[str, list[float]] = {}
    for n in range(rounds):
        for mode in ("stream", "postgresql") if n % 2 == 0 else ("postgresql", "stream"):
            vhost = rabbitmq.new_vhost()
            url, indexer, env, servers = rabbitmq.url_for(vhost), None, {}, list(broker)
            try:
                if mode == "postgresql":
                    dsn = await new_database(postgres)
                    indexer = start_indexer(url, dsn, tmp_path, f"e2e-{n}", batch=32)
                    env = {"CPW_API_STORE": "postgresql", "CPW_POSTGRES_URL": dsn}
                    servers += [postmaster, indexer.proc.pid]
                waited, started = cpu_wait_s(), time.perf_counter()
                rate, cpu = await http_rate(url, tmp_path, servers, **env)
                found.setdefault(mode, []).append(rate)
                found.setdefault(f"cpu_ms_{mode}", []).append(1000 * cpu)
                found.setdefault(f"cpu_wait_{mode}", []).append(
                    (cpu_wait_s() - waited) / (time.perf_counter() - started)
                )
            finally:
                if indexer is not None:
                    indexer.stop()
                rabbitmq.delete_vhost(vhost)
    return found


def listed(values: list[float], digits: int = 0) -> str:
    return "/".join(f"{v:.{digits}f}" for v in values)


async def test_pgstore_benchmark(rabbitmq, postgres, tmp_path):
    dsn = await new_database(postgres)
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    pg = {"CPW_API_STORE": "postgresql", "CPW_POSTGRES_URL": dsn}
    indexer = None
    try:
        empty, empty_ready_s = await timed_api(url, tmp_path, **pg)
        empty_rss = rss_bytes(empty.proc.pid) / 2**20
        empty.stop()
        load_s, size = await load_rows(dsn, JOBS)
        api, ready_s = await timed_api(url, tmp_path, **pg)
        # The control: the same first page from another API on a table of SMALL rows, in the same rounds.
        # What the machine's load does to a p99 shows in both; what a million rows do, only in the others.
        small_dsn = await new_database(postgres)
        await load_rows(small_dsn, SMALL)
        small, _ = await timed_api(url, tmp_path, CPW_API_STORE="postgresql", CPW_POSTGRES_URL=small_dsn)
        try:
            page = "/jobs?api-version=2024-01-01"
            deep = f"{page}&status=Succeeded&skipToken={await deep_token(dsn)}"
            lists = await list_p99(
                {"first": api.url + page, "deep": api.url + deep, "small": small.url + page}, tmp_path
            )
            rss = rss_bytes(api.proc.pid) / 2**20
        finally:
            api.stop()
            small.stop()
        events_per_s, indexer = await projector_rate(url, dsn, tmp_path)
        lag_ms, lag_jobs = await lag_p99(url, dsn)
    finally:
        if indexer is not None:
            indexer.stop()  # type: ignore[attr-defined]
        rabbitmq.delete_vhost(vhost)
    http = await http_rounds(rabbitmq, postgres, tmp_path)

    median = statistics.median
    list_first, list_deep, list_small = median(lists["first"]), median(lists["deep"]), median(lists["small"])
    list_ms = max(list_first, list_deep)
    pg_rate, stream_rate = median(http["postgresql"]), median(http["stream"])
    pg_cpu, stream_cpu = median(http["cpu_ms_postgresql"]), median(http["cpu_ms_stream"])
    print(
        f"\npgstore: jobs={JOBS} api_ready_s={ready_s:.2f} api_rss_mib={rss:.0f} "
        f"projector_events_per_s={events_per_s:.0f} lag_p99_ms={lag_ms:.0f} list_p99_ms={list_ms:.1f} "
        f"http_jobs_per_s={pg_rate:.0f} stream_http_jobs_per_s={stream_rate:.0f} http_ratio={pg_rate / stream_rate:.2f}"
    )
    print(
        f"pgstore detail: empty_api_ready_s={empty_ready_s:.2f} empty_api_rss_mib={empty_rss:.0f} "
        f"rss_growth_mib={rss - empty_rss:.0f} bytes_per_row={size / JOBS:.0f} table_mib={size / 2**20:.0f} "
        f"list_first_p99_ms={list_first:.1f} list_deep_p99_ms={list_deep:.1f} list_small_table_p99_ms={list_small:.1f} "
        f"list_req_per_s={median(lists['rate']):.0f} copy_s={load_s:.0f} projected_events={2 * PROJECTED} "
        f"lag_jobs={lag_jobs} projector_vs_sdk={events_per_s / SDK_JOBS_PER_S:.1f}x cpus={os.cpu_count()} "
        f"load_avg={os.getloadavg()[0]:.1f} http_cpu_ms_per_job={pg_cpu:.2f} "
        f"stream_http_cpu_ms_per_job={stream_cpu:.2f} http_cpu_ratio={stream_cpu / pg_cpu:.2f}"
    )
    pairs = [p / s for p, s in zip(http["postgresql"], http["stream"], strict=True)]
    print(  # every round's raw number: the medians above are of these
        f"pgstore rounds: list_first_p99_ms={listed(lists['first'], 1)} list_deep_p99_ms={listed(lists['deep'], 1)} "
        f"list_small_table_p99_ms={listed(lists['small'], 1)} list_warmup_p99_ms={listed(lists['warmup_first'], 1)}"
        f"/{listed(lists['warmup_deep'], 1)} list_cpu_wait={listed(lists['cpu_wait'], 2)} "
        f"http_jobs_per_s={listed(http['postgresql'])} stream_http_jobs_per_s={listed(http['stream'])} "
        f"http_ratio={listed(pairs, 2)} http_cpu_wait={listed(http['cpu_wait_postgresql'], 2)} "
        f"stream_http_cpu_wait={listed(http['cpu_wait_stream'], 2)} http_cpu_ms_per_job={listed(http['cpu_ms_postgresql'], 2)} "
        f"stream_http_cpu_ms_per_job={listed(http['cpu_ms_stream'], 2)}"
    )
