"""The worker process: uvloop, signals, the ops port, and a worker that survives broker outages."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from . import metrics, tracing
from ._version import __version__
from .lifecycle import connect_with_backoff, run_process
from .ops import listen, ops_app, ops_limits, server
from .providers import ProviderLookup, load_providers
from .role import WorkerRole, load_role
from .settings import Settings
from .worker import ProviderWorker

log = logging.getLogger(__name__)


async def serve_worker(settings: Settings, providers: ProviderLookup | None, stop: asyncio.Event) -> WorkerRole:
    """Run one worker role (ProviderWorker unless CPW_WORKER_ROLE names another) until `stop`, then drain it.

    The ops port is bound first: a taken port raises PortTaken before any job is consumed."""
    sock = listen(settings.health_host, settings.health_port, "the ops port (CPW_HEALTH_PORT)")
    role = load_role(settings.worker_role) if settings.worker_role else ProviderWorker
    worker = role(settings, providers)  # type: ignore[arg-type]
    ops = server(
        ops_app(
            is_ready=lambda: worker.ready,
            status=worker.status,
            identity=lambda: {"worker_id": worker.worker_id},
            registries=[metrics.REGISTRY],
            is_alive=lambda: worker.alive,
        ),
        settings.health_host,
        settings.health_port,
        limits=ops_limits(settings),
    )
    ops_task = asyncio.create_task(ops.serve(sockets=[sock]))
    started = time.monotonic()
    if await connect_with_backoff(worker.start, "worker", stop):
        log.info("worker started", extra={"startup_seconds": round(time.monotonic() - started, 3)})
        await stop.wait()
        await worker.stop()
    ops.should_exit = True
    await ops_task
    return worker


def run_worker(settings: Settings) -> int:
    """`cpw worker`: 0 after a drain, 2 when the ops port is taken or the role cannot be loaded."""
    try:
        role = load_role(settings.worker_role) if settings.worker_role else ProviderWorker
    except ValueError as exc:
        print(f"cpw worker: configuration error: CPW_WORKER_ROLE: {exc}", file=sys.stderr)
        return 2
    # A role of its own may need no providers; the provider worker cannot run without them.
    providers = load_providers(settings.providers) if role is ProviderWorker or settings.providers else None
    tracing.setup_from_env("cpw-worker", instance_id=settings.worker_id, version=__version__)

    return run_process("cpw worker", lambda stop: serve_worker(settings, providers, stop))
