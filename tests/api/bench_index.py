"""Index benchmark (issue 16): a real RabbitMQ stream holding N finished jobs, then `cpw api` started with
the env the chart's default values give the API container. One line per size:

    index: jobs=N ready_s=T rss_mib=R bytes_per_job=B accounted_per_job=A evicted=E newest_job_http=200 ...

Run: .venv/bin/python -m pytest tests/api/bench_index.py -m bench -s -o addopts="" (part of `make bench`;
CPW_BENCH_INDEX_JOBS, default 100000,300000,1000000). Goals: RSS <= 80% of the chart's API memory limit,
<= 600 bytes per job while nothing is evicted, ready <= 15 s at 1,000,000, the newest job 200 and an evicted
one 404 OperationExpired.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from controlplane_workers.broker import open_broker
from controlplane_workers.broker.base import KIND
from controlplane_workers.events import BATCH
from controlplane_workers.ids import new_job_id
from controlplane_workers.settings import load_settings
from controlplane_workers.topology import Topology
from tests.api.support import A, start_api, wait_ready
from tests.chart.chartlib import one, render_set
from tests.support.proc import rss_bytes

pytestmark = [pytest.mark.bench, pytest.mark.rabbitmq, pytest.mark.timeout(3600)]
SIZES = [int(n) for n in os.environ.get("CPW_BENCH_INDEX_JOBS", "100000,300000,1000000").split(",")]
EVENTS_PER_MESSAGE = 256  # the workers' group commit writes batches of up to 512
# Chart env the bench replaces: where the process listens and finds its credentials.
LOCAL = {"CPW_API_PORT", "CPW_HEALTH_PORT", "CPW_API_HOST", "CPW_HEALTH_HOST", "CPW_API_TOKENS_FILE", "CPW_WORKER_ID"}
UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3, "": 1}


def quantity(text: str) -> int:
    """A Kubernetes memory quantity ("256Mi") in bytes."""
    match = re.fullmatch(r"([0-9]+)([KMG]i?|)", str(text))
    assert match, text
    return int(match.group(1)) * UNITS[match.group(2)]


def chart_api_env() -> tuple[dict[str, str], int]:
    """The API container's CPW_* env as the chart's defaults render it, and its memory limit."""
    api = one(render_set("default"), "Deployment", "cpw-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    limit = quantity(container["resources"]["limits"]["memory"])
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if not name.startswith("CPW_") or name in LOCAL or name.endswith("_FILE"):
            continue
        if "value" in item:
            env[name] = item["value"]
        elif item.get("valueFrom", {}).get("resourceFieldRef", {}).get("resource") == "limits.memory":
            env[name] = str(limit)
    return env, limit


def finished_jobs(count: int, first: list[str]) -> Iterator[bytes]:
    """Stream messages holding `count` finished jobs (an Accepted record and a Succeeded event each)."""
    events: list[bytes] = []
    for i in range(count):
        job_id = new_job_id()
        if not first:
            first.append(job_id)
        now = time.time()
        job = {
            "id": job_id,
            "provider_namespace": "Demo.Compute",
            "resource_type": "virtualMachines",
            "operation": "create",
            "priority": 5,
            "submitted_at": now,
            "tenant": "tenant-a",
            "request": {
                "subscription_id": "sub-1",
                "resource_group": "rg-1",
                "resource_name": f"vm{i}",
                "provider_namespace": "Demo.Compute",
                "resource_type": "virtualMachines",
                "location": "westeurope",
                "body": {"location": "westeurope", "properties": {"vmSize": "Standard_D2s_v5"}},
                "api_version": "2024-01-01",
            },
        }
        result = {
            "id": f"/subscriptions/sub-1/resourceGroups/rg-1/providers/Demo.Compute/virtualMachines/vm{i}",
            "name": f"vm{i}",
            "type": "Demo.Compute/virtualMachines",
            "properties": {"vmSize": "Standard_D2s_v5", "provisioningState": "Succeeded"},
        }
        events.append(orjson.dumps({"job_id": job_id, "type": "accepted", "at": now, "job": job}))
        events.append(
            orjson.dumps(
                {
                    "job_id": job_id,
                    "type": "succeeded",
                    "at": now,
                    "worker_id": "w-1",
                    "result": result,
                    "tenant": "tenant-a",
                }
            )
        )
        if len(events) >= EVENTS_PER_MESSAGE:
            yield b"[" + b",".join(events) + b"]"
            events = []
    if events:
        yield b"[" + b",".join(events) + b"]"


async def fill(url: str, jobs: int) -> tuple[str, str, float]:
    """Publish `jobs` finished jobs; (the first job id, the newest, seconds taken)."""
    settings = load_settings(rabbitmq_url=url)
    publisher = open_broker(url, Topology.from_settings(settings), name="bench-index")
    await publisher.connect()
    first: list[str] = []
    started = time.perf_counter()
    chunk: list[tuple[bytes, dict]] = []
    last = b""
    for body in finished_jobs(jobs, first):
        chunk.append((body, {KIND: BATCH}))
        last = body
        if len(chunk) == 50:
            await publisher.publish_events(chunk)
            chunk = []
    if chunk:
        await publisher.publish_events(chunk)
    await publisher.close()
    newest = orjson.loads(last)[-1]["job_id"]
    return first[0], newest, time.perf_counter() - started


@pytest.mark.parametrize("jobs", SIZES)
async def test_index_at_volume(rabbitmq, tmp_path, jobs):
    env, limit = chart_api_env()
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    try:
        empty = await start_api(url, tmp_path, **env)  # the process's own baseline, with no job
        baseline = rss_bytes(empty.proc.pid) / 2**20
        empty.stop()
        first, newest, fill_s = await fill(url, jobs)
        started = time.perf_counter()
        api = await start_api(url, tmp_path, ready=False, **env)
        await wait_ready(api, f"{api.ops_url}/health/ready", timeout=600)
        ready_s = time.perf_counter() - started
        try:
            rss = rss_bytes(api.proc.pid) / 2**20
            async with httpx.AsyncClient(timeout=30) as http:
                index = (await http.get(f"{api.ops_url}/status")).json()["index"]
                newest_http = (await http.get(f"{api.url}/operations/{newest}", headers=A)).status_code
                oldest = await http.get(f"{api.url}/operations/{first}", headers=A)
        finally:
            api.stop()
    finally:
        rabbitmq.delete_vhost(vhost)
    held = index["jobs"]
    per_job = (rss - baseline) * 1024 * 1024 / max(held, 1)
    oldest_code = oldest.status_code if oldest.status_code == 200 else oldest.json()["error"]["code"]
    print(
        f"\nindex: jobs={jobs} ready_s={ready_s:.1f} rss_mib={rss:.0f} bytes_per_job={per_job:.0f} "
        f"accounted_per_job={index['bytes'] / max(held, 1):.0f} held={held} evicted={index['evicted']} "
        f"newest_job_http={newest_http} oldest_job={oldest_code} limit_mib={limit / 2**20:.0f} "
        f"rss_of_limit={rss * 2**20 / limit:.0%} baseline_mib={baseline:.0f} fill_s={fill_s:.0f}"
    )
    assert newest_http == 200
    assert index["evicted"] == 0 or oldest_code == "OperationExpired"
