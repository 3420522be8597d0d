"""Small helpers to run workers and clients inside a test."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any

from controlplane_workers import JobQueue, ProviderWorker, load_settings
from controlplane_workers.broker import Delivery, open_broker
from controlplane_workers.providers import as_lookup
from controlplane_workers.settings import Settings
from controlplane_workers.status import StatusIndex
from controlplane_workers.topology import Topology


def fast_settings(url: str, **overrides: Any) -> Settings:
    """Settings with short delays, so retries and heartbeats happen within a test."""
    values: dict[str, Any] = {
        "rabbitmq_url": url,
        "health_port": 0,
        "retry_base_delay": 0.05,
        "retry_jitter": 0.0,
        "retry_max_delay": 1.0,
        "max_attempts": 3,
        "heartbeat_interval": 0.2,
        "running_event_delay": 0.0,
        "drain_timeout": 5.0,
        "job_timeout": 10.0,
    }
    values.update(overrides)
    return load_settings(**values)


@asynccontextmanager
async def running_worker(url: str, provider: Any, **overrides: Any):
    worker = ProviderWorker(fast_settings(url, **overrides), as_lookup(provider))
    await worker.start()
    try:
        yield worker
    finally:
        if not worker.draining:
            await worker.stop(drain_timeout=1.0)


@asynccontextmanager
async def client(url: str, index: StatusIndex | None = None, **overrides: Any):
    queue = JobQueue(url, settings=fast_settings(url, **overrides), index=index)
    await queue.connect()
    try:
        yield queue
    finally:
        await queue.disconnect()


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:  # noqa: ANN001
    """Poll a condition that has no event to await (e.g. a broker-side counter)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def request(name: str, script: str = "ok", **body: Any) -> dict[str, Any]:
    return {
        "subscription_id": "sub-1",
        "resource_group": "rg-1",
        "resource_name": name,
        "location": "westeurope",
        "body": {"script": script, **body},
        "api_version": "2024-01-01",
    }


async def lose_a_delivery(url: str, **overrides: Any) -> Delivery:
    """A worker that takes the next job and goes away holding it: its connection closes, nothing settled."""
    broker = open_broker(url, Topology.from_settings(fast_settings(url, **overrides)))
    await broker.connect()
    taken: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()

    async def hold(delivery: Delivery) -> None:
        if not taken.done():
            taken.set_result(delivery)

    await broker.consume_jobs(hold, 1)
    try:
        return await asyncio.wait_for(taken, 10)
    finally:
        await broker.close()
