"""The worker process: uvloop, signals, the ops port, and a worker that survives broker outages."""

from __future__ import annotations

import asyncio
import logging
import time

import uvloop

from . import looplag, metrics, tracing
from ._version import __version__
from .lifecycle import connect_with_backoff, install_stop_handlers
from .ops import ops_app, ops_limits, server
from .providers import ProviderLookup, load_providers
from .settings import Settings
from .worker import ProviderWorker

log = logging.getLogger(__name__)


async def serve_worker(settings: Settings, providers: ProviderLookup, stop: asyncio.Event) -> ProviderWorker:
    """Run one worker until `stop` is set, then drain it."""
    worker = ProviderWorker(settings, providers)
    ops = server(
        ops_app(
            is_ready=lambda: worker.ready,
            status=worker.status,
            identity=lambda: {"worker_id": worker.worker_id},
            registries=[metrics.REGISTRY],
        ),
        settings.health_host,
        settings.health_port,
        limits=ops_limits(settings),
    )
    ops_task = asyncio.create_task(ops.serve())
    started = time.monotonic()
    if await connect_with_backoff(worker.start, "worker", stop):
        log.info("worker started", extra={"startup_seconds": round(time.monotonic() - started, 3)})
        await stop.wait()
        await worker.stop()
    ops.should_exit = True
    await ops_task
    return worker


def run_worker(settings: Settings) -> int:
    providers = load_providers(settings.providers)
    tracing.setup_from_env("cpw-worker", instance_id=settings.worker_id, version=__version__)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        async with looplag.watching():
            await serve_worker(settings, providers, stop)

    try:
        uvloop.run(main())
    finally:
        tracing.shutdown()  # flush the spans still batched
    return 0
