"""The `cpw indexer` process: the ops port (health, /status, /metrics), then the projector until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from controlplane_workers.lifecycle import run_process
from controlplane_workers.ops import listen, ops_app, ops_limits, server
from controlplane_workers.redact import redact_text

from . import projector_metrics as metrics
from .projector import Projector
from .settings import ApiSettings

log = logging.getLogger("controlplane_api.projector")


def run_indexer(settings: ApiSettings) -> int:
    """`cpw indexer`: 0 once stopped by a signal, 2 for a taken ops port, 1 when PostgreSQL or the broker failed it."""
    try:
        return run_process("cpw indexer", lambda stop: serve_indexer(settings, stop))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.error("indexer: %s: %s", type(exc).__name__, redact_text(str(exc)))
        return 1


async def serve_indexer(settings: ApiSettings, stop: asyncio.Event) -> Projector:
    """The ops port first (a taken port stops the process before it takes the lock), then the projector."""
    sock = listen(settings.health_host, settings.health_port, "the ops port (CPW_HEALTH_PORT)")
    projector = Projector(settings)
    ops = server(
        ops_app(
            is_ready=lambda: projector.ready,
            status=projector.status,
            identity=lambda: {"worker_id": settings.worker_id, "role": projector.role},
            registries=[metrics.REGISTRY],
        ),
        settings.health_host,
        settings.health_port,
        limits=ops_limits(settings),
    )
    ops_task = asyncio.create_task(ops.serve(sockets=[sock]))
    started = time.monotonic()
    try:
        await projector.run(stop)
    finally:
        ops.should_exit = True
        await ops_task
        elapsed = time.monotonic() - started
        log.warning(
            "indexer: stopped: %d events in %d transactions, %.1fs", projector.events, projector.transactions, elapsed
        )
    return projector
