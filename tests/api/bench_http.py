"""HTTP benchmark: accepted submissions/s next to a bare Starlette 202 route, submit latency at
500 req/s, and end-to-end HTTP submit -> Succeeded with one API and one worker process.

Run: .venv/bin/python -m pytest tests/api/bench_http.py -m bench -s -o addopts=""
Load generator: wrk (Debian package `wrk`, 1 thread) for everything over HTTP: 64 connections for
5 s for throughput; for the latency at 500 req/s, 52 connections that each wait a think time
between a response and their next request, 10 s per run:
- independent clients: the think time is drawn from an exponential distribution, mean 100 ms, so
  requests arrive as a Poisson process (the usual model of many unrelated callers);
- synchronized clients: a fixed 100 ms. Clients answered together by one broker confirm send again
  together 100 ms later, so arrivals bunch into bursts that stay bunched: a worst case, printed too.
Each latency run starts with an empty job queue, as a fleet that keeps up leaves it (the throughput
run leaves thousands of jobs behind that no worker runs here).
The bench charges every process for its CPU (/proc): the bare server, the API, the broker and wrk,
per request; from those it prints the CPU an API could spend per submission at 40% of the bare
route on this machine's cores once the broker and wrk have had theirs.
The broker ceiling and floor are what the broker alone allows, with no HTTP: an aiormq client in the
test process publishing persistent jobs, and (floor) a job then a stream record, each confirmed.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import subprocess
import sys
import textwrap
import time

import aiohttp
import aiormq
import httpx
import pytest
import uvloop

from controlplane_workers.settings import Settings
from controlplane_workers.topology import MAX_PRIORITY
from tests.api.support import RG, ROOT, A, V, start_api, start_worker
from tests.support.proc import cpu_seconds
from tests.support.rabbitmq import free_port

pytestmark = [pytest.mark.bench, pytest.mark.rabbitmq]

BARE = textwrap.dedent("""
    import sys, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    async def accepted(request):
        await request.body()
        return Response(b'{"jobId":"x","status":"Accepted"}', 202, media_type="application/json")
    app = Starlette(routes=[Route("/{path:path}", accepted, methods=["PUT", "GET"])])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                log_level="warning", access_log=False)
""")

LUA = textwrap.dedent("""
    wrk.method = "PUT"
    wrk.body = '{"location": "westeurope", "properties": {"vmSize": "S"}}'
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Authorization"] = "Bearer token-a"
""")


# wrk's delay() is the think time in ms between a response and the connection's next request.
CONNECTIONS = 52  # x one request per (100 ms think time + ~4 ms latency) = ~500 req/s offered
INDEPENDENT = LUA + "math.randomseed(1)\nfunction delay() return -100 * math.log(1 - math.random()) end\n"
SYNCHRONIZED = LUA + "function delay() return 100 end\n"
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def percentiles(out: str) -> dict[str, float]:
    """wrk --latency's distribution, in seconds."""
    found = re.findall(r"^\s+(50|75|90|99)%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M)
    return {p: float(v) * UNITS[u] for p, v, u in found}


def wrk(url: str, script: str, seconds: int = 5, connections: int = 64) -> tuple[float, str]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert errors is None, out
    return rate, out


def charged_wrk(url: str, script: str, pids: dict[str, int]) -> tuple[float, dict[str, float]]:
    """wrk's throughput run, and the CPU microseconds each process in `pids` (with its children)
    and wrk itself spent per request. wrk is the only child this process reaps meanwhile, so the
    growth of RUSAGE_CHILDREN is wrk's own."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate, out = wrk(url, script)
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used["wrk"] = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return rate, {name: 1e6 * seconds / requests for name, seconds in used.items()}


async def purge(url: str, queue: str) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_purge(queue)
    finally:
        await connection.close()


async def latency(url: str, script: str, jobs_url: str, jobs_queue: str) -> tuple[float, dict[str, float]]:
    """Completed req/s and wrk's latency percentiles (seconds) of one 10-s run at ~500 req/s."""
    await purge(jobs_url, jobs_queue)
    rate, out = wrk(url, script, seconds=10, connections=CONNECTIONS)
    return rate, percentiles(out)


def budget(
    cores: int, bare_rate: float, bare_us: dict[str, float], api_us: dict[str, float], job_us: float, publish_us: float
) -> str:
    """The CPU an API may spend per submission at 40% of the bare route on `cores`, after the broker
    and wrk, next to the least any API on this stack spends: the bare route plus aiormq's publish."""
    target = 0.4 * bare_rate
    per_submission = 1e6 * cores / target
    left = per_submission - api_us["broker"] - api_us["wrk"]
    best = per_submission - job_us - api_us["wrk"]
    least = bare_us["server"] + publish_us
    return (
        f"CPU budget at 40% of the bare route ({target:,.0f} submissions/s on {cores} cores = {per_submission:.0f} us "
        f"per submission): {left:.0f} us left for the API after the broker ({api_us['broker']:.0f} us, as in the "
        f"API run) and wrk ({api_us['wrk']:.0f} us); {best:.0f} us if the broker took only a confirmed job publish "
        f"({job_us:.0f} us, at the ceiling). Any API here spends at least {least:.0f} us (bare route "
        f"{bare_us['server']:.0f} + aiormq publish {publish_us:.0f}); this API spends {api_us['api']:.0f} us"
    )


def ms(p: dict[str, float]) -> str:
    return f"p50 {p['50'] * 1000:.1f} ms, p90 {p['90'] * 1000:.1f} ms, p99 {p['99'] * 1000:.1f} ms"


# A job as the broker sees it, without the API: ~270 bytes, persistent, with a priority.
JOB = b'{"id":"01a22fa7890d7d598a7337fbca26066f","provider_namespace":"Test.Scripted"}' + b" " * 200
PERSISTENT = aiormq.spec.Basic.Properties(delivery_mode=2, content_type="application/json", priority=5)


async def jobs_channel(connection: aiormq.abc.AbstractConnection, queue: str) -> aiormq.abc.AbstractChannel:
    """A confirming channel and a queue of the job queue's own type: classic, with priorities (topology.py)."""
    channel = await connection.channel(publisher_confirms=True)
    await channel.queue_declare(queue, durable=True, arguments={"x-max-priority": MAX_PRIORITY})
    return channel


async def broker_floor(url: str, seconds: float = 10.0, tasks: int = 50, interval: float = 0.1) -> dict[str, float]:
    """p50/p90/p99 of (persistent job publish, then stream append), both confirmed, at tasks/interval per s."""
    connection = await aiormq.connect(url)
    try:
        channel = await jobs_channel(connection, "bench-floor-jobs")
        await channel.queue_declare("bench-floor-stream", durable=True, arguments={"x-queue-type": "stream"})
        record = b'[{"type":"accepted","job":' + JOB + b"}]"
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        latencies: list[float] = []

        async def submitter(offset: float) -> None:
            due = loop.time() + offset
            while True:
                await asyncio.sleep(max(0.0, due - loop.time()))  # pacing, as wrk's delay(): not a wait for an event
                if loop.time() >= end:
                    return
                started = time.perf_counter()
                await channel.basic_publish(JOB, routing_key="bench-floor-jobs", properties=PERSISTENT)
                await channel.basic_publish(record, routing_key="bench-floor-stream", properties=PERSISTENT)
                latencies.append(time.perf_counter() - started)
                due += interval

        await asyncio.gather(*(submitter(i * interval / tasks) for i in range(tasks)))
        await channel.queue_delete("bench-floor-jobs")
        await channel.queue_delete("bench-floor-stream")
    finally:
        await connection.close()
    latencies.sort()
    return {p: latencies[min(len(latencies) - 1, int(len(latencies) * int(p) / 100))] for p in ("50", "90", "99")}


async def broker_ceiling(url: str, seconds: float = 5.0, in_flight: int = 64) -> tuple[float, int, float]:
    """Confirmed persistent job publishes/s that one aiormq client gets from this broker, `in_flight`
    at a time as wrk's 64 connections, with no HTTP and nothing else per job: the most submissions/s
    any API that answers after the job's confirm could reach on this machine. Returns (rate, publishes,
    this thread's CPU us per publish): run it on a uvloop loop of its own thread, as the API runs."""
    connection = await aiormq.connect(url)
    try:
        channel = await jobs_channel(connection, "bench-ceiling-jobs")
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        done = 0

        async def publisher() -> None:
            nonlocal done
            while loop.time() < end:
                await channel.basic_publish(JOB, routing_key="bench-ceiling-jobs", properties=PERSISTENT)
                done += 1

        started, cpu = time.perf_counter(), time.thread_time()
        await asyncio.gather(*(publisher() for _ in range(in_flight)))
        rate = done / (time.perf_counter() - started)
        client_us = 1e6 * (time.thread_time() - cpu) / done
        await channel.queue_delete("bench-ceiling-jobs")
    finally:
        await connection.close()
    return rate, done, client_us


@pytest.mark.timeout(600)
async def test_http_benchmark(rabbitmq, vhost_url, tmp_path):
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    server = rabbitmq.server  # None for an external broker (CPW_TEST_RABBITMQ_URL): its CPU is not charged
    broker = {"broker": server.process.pid} if server is not None and server.process else {}
    script = tmp_path / "put.lua"
    script.write_text(LUA)
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(port)], cwd=ROOT)
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                try:
                    await http.get(f"http://127.0.0.1:{port}/x")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        bare_rate, bare_us = charged_wrk(
            f"http://127.0.0.1:{port}{RG}/vm?api-version=2024-01-01", str(script), {"server": bare.pid}
        )
    finally:
        bare.terminate()
        bare.wait(10)

    jobs_queue = Settings().jobs_queue
    api = await start_api(
        vhost_url, tmp_path, CPW_API_TENANT_MAX_QUEUED=10_000_000, CPW_API_TENANT_RATE=0, CPW_LOG_LEVEL="ERROR"
    )
    try:
        api_rate, api_us = charged_wrk(
            f"{api.url}{RG}/vm?api-version=2024-01-01", str(script), {"api": api.proc.pid, **broker}
        )
        print(f"\nbare Starlette 202 route: {bare_rate:,.0f} req/s (wrk -t1 -c64, uvicorn+httptools+uvloop)")
        print(
            f"API PUT -> 201, broker-confirmed: {api_rate:,.0f} submissions/s = "
            f"{100 * api_rate / bare_rate:.0f}% of the bare route"
        )
        print("CPU per request (us): bare route " + ", ".join(f"{k} {v:.0f}" for k, v in bare_us.items()))
        print("CPU per submission (us): API run " + ", ".join(f"{k} {v:.0f}" for k, v in api_us.items()))

        for name, lua in (("independent clients", INDEPENDENT), ("synchronized clients", SYNCHRONIZED)):
            path = tmp_path / f"{name.split()[0]}.lua"
            path.write_text(lua)
            rate, p = await latency(f"{api.url}{RG}/lat?api-version=2024-01-01", str(path), vhost_url, jobs_queue)
            think = "exponential" if lua is INDEPENDENT else "fixed"
            print(
                f"submit latency, {name} ({CONNECTIONS} connections, {think} 100 ms think time, 10 s): "
                f"{rate:,.0f} req/s, {ms(p)}"
            )
    finally:
        api.stop()

    before = {name: cpu_seconds(pid) for name, pid in broker.items()}
    ceiling, published, publish_us = await asyncio.to_thread(uvloop.run, broker_ceiling(vhost_url))
    print(
        f"broker ceiling: {ceiling:,.0f} confirmed persistent job publishes/s (aiormq in the test process, 64 in "
        f"flight, no HTTP, no stream record) = {100 * ceiling / bare_rate:.0f}% of the bare route; "
        f"aiormq's client CPU per confirmed publish on uvloop: {publish_us:.0f} us"
    )
    if broker:
        job_us = 1e6 * (cpu_seconds(broker["broker"]) - before["broker"]) / published
        print(budget(os.cpu_count() or 1, bare_rate, bare_us, api_us, job_us, publish_us))
    floor = await broker_floor(vhost_url)
    print(
        f"broker floor at 500/s (confirmed persistent job + stream append, no HTTP, aiormq in the test "
        f"process): {ms(floor)}"
    )

    # end to end: HTTP submit -> Succeeded, one API and one worker process
    api = await start_api(
        vhost_url, tmp_path, CPW_API_TENANT_MAX_QUEUED=10_000_000, CPW_API_TENANT_RATE=0, CPW_LOG_LEVEL="ERROR"
    )
    worker = await start_worker(vhost_url, tmp_path, CPW_MAX_CONCURRENT_JOBS=200, CPW_LOG_LEVEL="ERROR")
    try:
        n = 3000
        seconds, submitted = await end_to_end(api.url, n)
        print(
            f"end to end: {n} jobs HTTP submit -> Succeeded in {seconds:.2f}s = {n / seconds:,.0f} jobs/s "
            f"(submitting took {submitted:.2f}s), one API and one worker process"
        )
    finally:
        worker.stop()
        api.stop()


async def end_to_end(api_url: str, n: int) -> tuple[float, float]:
    """`n` PUTs (64 in flight) until all are Succeeded, by the API's /stats: (seconds, seconds submitting)."""
    # aiohttp, not httpx: httpcore's pool work per request grows with the requests queued on it
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=30), headers=A
    ) as http:

        async def succeeded() -> int:
            async with http.get(f"{api_url}/stats") as r:
                return (await r.json())["jobs"]["Succeeded"]

        before = await succeeded()
        started = time.perf_counter()
        sem = asyncio.Semaphore(64)

        async def submit(i: int) -> None:
            async with sem:
                async with http.put(
                    f"{api_url}/subscriptions/s/resourceGroups/r/providers/Test.Scripted/e2e/j{i}",
                    params=V,
                    json={"script": "ok"},
                ) as r:
                    assert r.status == 201, await r.text()

        await asyncio.gather(*(submit(i) for i in range(n)))
        submitted = time.perf_counter() - started
        while await succeeded() < before + n:
            await asyncio.sleep(0.05)  # the job count has no event to await from outside the API
        return time.perf_counter() - started, submitted
