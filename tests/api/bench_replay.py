"""Replay benchmark: how fast an API process rebuilds its status index from `provider.results`.

Run: .venv/bin/python -m pytest tests/api/bench_replay.py -m bench -s -o addopts=""
(CPW_BENCH_REPLAY_EVENTS, default 1,000,000). Prints events/s over a real RabbitMQ stream, the
index alone (no broker), and the memory the index holds per job.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
import uuid

import orjson
import pytest

from controlplane_api.index import ApiIndex
from controlplane_workers.broker import open_broker
from controlplane_workers.broker.base import KIND, StreamMessage
from controlplane_workers.events import BATCH
from controlplane_workers.settings import load_settings
from controlplane_workers.status import StatusIndex
from controlplane_workers.topology import Topology

pytestmark = [pytest.mark.bench, pytest.mark.rabbitmq]
EVENTS = int(os.environ.get("CPW_BENCH_REPLAY_EVENTS", "1000000"))


BATCH_SIZE = int(os.environ.get("CPW_BENCH_REPLAY_BATCH", "64"))


def job_events(i: int) -> list[bytes]:
    """One job as the stream holds it: its Accepted record, then its terminal event."""
    job_id = uuid.uuid4().hex
    job = {
        "id": job_id,
        "provider_namespace": "Demo.Compute",
        "resource_type": "virtualMachines",
        "operation": "create",
        "priority": 7,
        "submitted_at": time.time(),
        "tenant": f"tenant-{i % 10}",
        "request": {
            "subscription_id": "sub",
            "resource_group": "rg",
            "resource_name": f"vm{i}",
            "provider_namespace": "Demo.Compute",
            "resource_type": "virtualMachines",
            "location": "westeurope",
            "body": {"location": "westeurope", "properties": {"vmSize": "S"}},
            "api_version": "2024-01-01",
        },
    }
    done = {
        "job_id": job_id,
        "type": "succeeded",
        "at": time.time(),
        "attempt": 1,
        "worker_id": "w-1",
        "result": {"id": f"/vm{i}", "name": f"vm{i}", "properties": {"provisioningState": "Succeeded"}},
    }
    accepted = {"job_id": job_id, "type": "accepted", "at": job["submitted_at"], "job": job}
    return [orjson.dumps(accepted), orjson.dumps(done)]


def stream_messages(jobs: int) -> list[tuple[bytes, dict]]:
    """Events grouped BATCH_SIZE to a stream message, as the workers' group commit writes them."""
    events = [event for i in range(jobs) for event in job_events(i)]
    return [
        (b"[" + b",".join(events[k : k + BATCH_SIZE]) + b"]", {KIND: BATCH}) for k in range(0, len(events), BATCH_SIZE)
    ]


def test_index_alone_and_memory_per_job():
    messages = [StreamMessage(body, headers, n) for n, (body, headers) in enumerate(stream_messages(100_000))]
    index = StatusIndex()
    started = time.perf_counter()
    index.apply_batch(messages)
    seconds = time.perf_counter() - started
    print(
        f"\nindex alone: {index.events} events in {seconds:.2f}s = {index.events / seconds:,.0f} events/s "
        f"({BATCH_SIZE} events per stream message)"
    )

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    measured = StatusIndex()
    measured.apply_batch(messages[: 40_000 // BATCH_SIZE])
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    print(
        f"index memory: {held / len(measured):,.0f} bytes per job (succeeded, small result; "
        f"{len(measured)} jobs, tracemalloc)"
    )


async def test_replay_from_a_real_stream(vhost_url):
    settings = load_settings(rabbitmq_url=vhost_url, results_max_bytes=4_000_000_000)
    topology = Topology.from_settings(settings)
    publisher = open_broker(vhost_url, topology, name="bench-publisher")
    await publisher.connect()
    jobs = EVENTS // 2
    started = time.perf_counter()
    messages = stream_messages(jobs)
    for k in range(0, len(messages), 500):
        await publisher.publish_events(messages[k : k + 500])
    print(f"\npublished {jobs * 2} events in {time.perf_counter() - started:.1f}s")
    await publisher.close()

    for run in (1, 2):
        reader = open_broker(vhost_url, topology, name="bench-reader")
        await reader.connect()
        index = ApiIndex(max_jobs=jobs + 10)
        done = asyncio.Event()

        def on_batch(messages, index=index, done=done):  # noqa: ANN001
            index.apply_batch(messages)
            if index.events >= jobs * 2:
                done.set()

        started = time.perf_counter()
        subscription = await reader.follow(topology.results_stream, on_batch, "first")
        await asyncio.wait_for(done.wait(), 600)
        seconds = time.perf_counter() - started
        await subscription.cancel()
        await reader.close()
        assert len(index) == jobs and index.malformed == 0
        print(
            f"replay run {run}: {index.events:,} events ({len(index):,} jobs) in {seconds:.2f}s = "
            f"{index.events / seconds:,.0f} events/s; 1,000,000 events would take "
            f"{1_000_000 / (index.events / seconds):.1f}s"
        )
