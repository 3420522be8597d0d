"""HTTP benchmark: accepted submissions/s next to a bare Starlette 202 route, submit latency at
500 req/s, and end-to-end HTTP submit -> Succeeded with one API and one worker process.

Run: .venv/bin/python -m pytest tests/api/bench_http.py -m bench -s -o addopts=""
Load generator: wrk (Debian package `wrk`; 1 thread, 64 connections, 5 s) for throughput; an
open-loop asyncio/httpx generator in the test process for the fixed-rate latency run.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from tests.api.support import RG, ROOT, A, V, start_api, start_worker
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


# wrk paces each connection with delay(): 50 connections x one request per 100 ms = 500 req/s offered.
# With latencies far below the pause this is an open loop in effect (no coordinated omission).
PACED = LUA + "function delay() return 100 end\n"
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
    errors = re.search(r"Non-2xx or 3xx responses: (\\d+)", out)
    assert errors is None, out
    return rate, out


@pytest.mark.timeout(600)
async def test_http_benchmark(vhost_url, tmp_path):
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
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
        bare_rate, _ = wrk(f"http://127.0.0.1:{port}{RG}/vm?api-version=2024-01-01", str(script))
    finally:
        bare.terminate()
        bare.wait(10)

    api = await start_api(vhost_url, tmp_path, CPW_API_TENANT_MAX_QUEUED=10_000_000, CPW_LOG_LEVEL="ERROR")
    try:
        api_rate, out = wrk(f"{api.url}{RG}/vm?api-version=2024-01-01", str(script))
        print(f"\nbare Starlette 202 route: {bare_rate:,.0f} req/s (wrk -t1 -c64, uvicorn+httptools+uvloop)")
        print(
            f"API PUT -> 201, broker-confirmed: {api_rate:,.0f} submissions/s = "
            f"{100 * api_rate / bare_rate:.0f}% of the bare route"
        )

        # fixed rate: 500 req/s for 10 s from wrk in its own process
        paced = tmp_path / "paced.lua"
        paced.write_text(PACED)
        rate, out = wrk(f"{api.url}{RG}/lat?api-version=2024-01-01", str(paced), seconds=10, connections=50)
        p = percentiles(out)
        print(
            f"submit latency at {rate:,.0f} req/s (wrk, 50 connections paced at 10 req/s each, 10 s): "
            f"p50 {p['50'] * 1000:.1f} ms, p90 {p['90'] * 1000:.1f} ms, p99 {p['99'] * 1000:.1f} ms"
        )
    finally:
        api.stop()

    # end to end: HTTP submit -> Succeeded, one API and one worker process
    api = await start_api(vhost_url, tmp_path, CPW_API_TENANT_MAX_QUEUED=10_000_000, CPW_LOG_LEVEL="ERROR")
    worker = await start_worker(vhost_url, tmp_path, CPW_MAX_CONCURRENT_JOBS=200, CPW_LOG_LEVEL="ERROR")
    try:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64), timeout=30) as http:
            before = (await http.get(f"{api.url}/stats", headers=A)).json()["jobs"]["Succeeded"]
            n = 3000
            started = time.perf_counter()
            sem = asyncio.Semaphore(64)

            async def submit(i: int) -> None:
                async with sem:
                    r = await http.put(
                        f"{api.url}/subscriptions/s/resourceGroups/r/providers/Test.Scripted/e2e/j{i}",
                        params=V,
                        headers=A,
                        json={"script": "ok"},
                    )
                    assert r.status_code == 201

            await asyncio.gather(*(submit(i) for i in range(n)))
            submitted = time.perf_counter() - started
            while (await http.get(f"{api.url}/stats", headers=A)).json()["jobs"]["Succeeded"] < before + n:
                await asyncio.sleep(0.05)
            seconds = time.perf_counter() - started
        print(
            f"end to end: {n} jobs HTTP submit -> Succeeded in {seconds:.2f}s = {n / seconds:,.0f} jobs/s "
            f"(submitting took {submitted:.2f}s), one API and one worker process"
        )
    finally:
        worker.stop()
        api.stop()
