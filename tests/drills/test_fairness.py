"""Fairness drill (issue 20): tenant A submits at five times its rate limit while tenant B submits at a steady
rate below it. Real RabbitMQ, a real `cpw api` (uvicorn) and two real `cpw worker` processes.

The fleet is sized so that A's limit plus B fits in it and A's offered load does not: without the limit
(CPW_API_TENANT_RATE=0) A's excess piles up in the queue ahead of B's jobs and B's wait grows by seconds
for every second of the flood. With it, A's excess gets 429 + Retry-After at the door and B's jobs start
at once. Prints `fairness: b_p99_start_s=... a_accepted=... a_rejected=...`; B's p99 from submit to start
(its Running event's time) must stay <= 1 s and A must have been refused.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime

import aiohttp
import httpx
import pytest

from tests.api.support import A, B, poll, start_api, start_worker

pytestmark = pytest.mark.rabbitmq

SIZES = [pytest.param("small", id="small"), pytest.param("full", id="full", marks=pytest.mark.drill)]
LIMIT, BURST = 5, 5  # tenant rate (per s) and burst of the API
A_RATE, B_RATE = 5 * LIMIT, 4  # offered submissions per second
SLOTS, JOB = 3, "sleep:0.3"  # 2 workers x 3 slots / 0.3 s: 20 jobs/s, above LIMIT + B_RATE, below A_RATE + B_RATE
RESULTS: list[str] = []


def _epoch(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


async def offer(http: aiohttp.ClientSession, url: str, headers: dict, rate: float, duration: float, tag: str):  # noqa: ANN201
    """Open loop: submit at `rate`/s for `duration` s whatever the answers; [(sent at, status, job id)]. aiohttp,
    as the other drills' load: httpx's pool costs the generator more CPU than the API spends."""
    body = {"namespace": "Test.Scripted", "type": "things", "operation": "create"}
    answers: list[tuple[float, int, str | None]] = []

    async def one(n: int) -> None:
        sent = time.time()
        request = {**body, "request": {"resource_name": f"{tag}{n}", "body": {"script": JOB}}}
        async with http.post(f"{url}/jobs", json=request, headers=headers) as response:
            if response.status == 429:
                assert int(response.headers["Retry-After"]) >= 1
            answers.append((sent, response.status, (await response.json()).get("id")))

    started, tasks = time.monotonic(), []
    for n in range(int(rate * duration)):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the pacing of the load itself, not a synchronisation
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    return answers


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(180)
async def test_a_flooding_tenant_does_not_starve_the_others(size, vhost_url, tmp_path):
    duration = 4.0 if size == "small" else 12.0
    api = await start_api(vhost_url, tmp_path, CPW_API_TENANT_RATE=LIMIT, CPW_API_TENANT_BURST=BURST)
    workers = await asyncio.gather(
        *(start_worker(vhost_url, tmp_path, CPW_MAX_CONCURRENT_JOBS=SLOTS) for _ in range(2))
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30.0)) as load:
            flood, steady = await asyncio.gather(
                offer(load, api.url, A, A_RATE, duration, "a"), offer(load, api.url, B, B_RATE, duration, "b")
            )
        assert {status for _, status, _ in steady} == {202}, "B stays below its limit: never refused"
        async with httpx.AsyncClient(timeout=30.0) as http:
            waits = []
            for sent, _, job_id in steady:
                view = await poll(http, f"{api.url}/jobs/{job_id}", lambda r: r.json()["startedAt"], headers=B)
                waits.append(_epoch(view.json()["startedAt"]) - sent)
        a_accepted = sum(status == 202 for _, status, _ in flood)
        a_rejected = sum(status == 429 for _, status, _ in flood)
        assert a_accepted + a_rejected == len(flood), {status for _, status, _ in flood}
        line = f"fairness: b_p99_start_s={p99(waits):.3f} a_accepted={a_accepted} a_rejected={a_rejected}"
        print(line)
        RESULTS.append(f"[{size}] {line}")
        assert p99(waits) <= 1.0 and a_rejected > 0
        assert a_accepted <= BURST + LIMIT * duration * 1.2  # the limit, give or take the pacing's jitter
    finally:
        for proc in (*workers, api):
            proc.stop()
