"""The worker process: uvloop, signals, the ops port, and a worker that survives broker outages."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import uvloop

from . import __version__, looplag, metrics, tracing
from .errors import BrokerUnavailable
from .ops import ops_app, server
from .providers import ProviderLookup, load_providers
from .redact import redact_text
from .settings import Settings
from .worker import ProviderWorker

log = logging.getLogger(__name__)


async def connect_with_backoff(start, what: str, stop: asyncio.Event, cap: float = 10.0) -> bool:  # noqa: ANN001
    """Call `start()` until it connects; False if asked to stop first."""
    delay = 0.5
    while not stop.is_set():
        try:
            await start()
            return True
        except BrokerUnavailable as exc:
            log.warning("%s: broker unavailable, retrying in %.1fs: %s", what, delay, redact_text(str(exc)))
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, cap)
    return False


def install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


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
