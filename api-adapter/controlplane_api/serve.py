"""Run the API adapter: `cpw api` (run_api) and, inside `cpw dev`, serve_api.

Start-up: the public and ops ports answer at once (/health/ready says 503, the API routes 503 +
Retry-After); the process connects with backoff, follows `provider.results` from its retention
start, publishes a marker onto the stream and is ready once it has read its own marker back, i.e.
once the index holds everything written before it started.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from typing import Any

import orjson
from starlette.routing import Route

from controlplane_workers import __version__, gcpolicy, tracing
from controlplane_workers.broker.base import KIND
from controlplane_workers.fleet import WorkerRegistry
from controlplane_workers.httplimits import HttpLimits
from controlplane_workers.lifecycle import connect_with_backoff, run_process
from controlplane_workers.ops import ops_app, ops_limits, server
from controlplane_workers.queue import JobQueue
from controlplane_workers.status import MARKER

from . import metrics
from .app import build_app
from .auth import TokenAuth, TokenFileError
from .context import ApiContext
from .index import MARKER_ID, ApiIndex, Unindexed
from .memory import index_max_bytes
from .openapi import build_openapi
from .settings import ApiSettings
from .store import IndexStore, OperationStore, retention_seconds

log = logging.getLogger("controlplane_api")


class ApiProcess:
    """One API process: the queue, its index, the fleet view, the app and its readiness."""

    def __init__(self, settings: ApiSettings, *, dev: bool = False) -> None:
        self.settings = settings
        self.dev = dev
        self.auth = TokenAuth(settings.api_tokens_file) if settings.api_tokens_file else None
        self.store: OperationStore
        self.index: ApiIndex
        name = f"cpw-api {settings.worker_id}"
        if settings.api_store == "postgresql":  # no index here: the projector keeps the operations
            from .pgstore import PostgresStore

            self.store, self.index = PostgresStore(settings), Unindexed(100)
            self.queue = JobQueue(settings=settings, index=self.index, name=name, follow_results=False)
        else:
            retention = retention_seconds(settings.results_max_age)
            self.store = IndexStore(settings.api_index_max_jobs, retention, index_max_bytes(settings))
            self.index = self.store.index
            self.queue = JobQueue(settings=settings, index=self.index, name=name)
        self.fleet = WorkerRegistry()
        self.ctx = ApiContext(settings, self.queue, self.store, self.fleet, self.auth, build_openapi(settings))
        self.rebuilt = asyncio.Event()
        self.rebuild_seconds: float | None = None
        self.started = time.time()
        self.ops = ops_app(is_ready=self.is_ready, status=self.status, identity=self.identity)
        extra = [Route(r.path, r.endpoint) for r in self.ops.routes if isinstance(r, Route)] if dev else []
        self.app = tracing.instrument_app(build_app(self.ctx, extra_routes=extra))
        metrics.INDEX_JOBS.set_function(lambda: len(self.index))
        metrics.INDEX_BYTES.set_function(lambda: self.index.nbytes)
        metrics.INDEX_MAX_BYTES.set_function(lambda: self.index.max_bytes or 0)
        metrics.INDEX_LAG.set_function(self._lag)
        metrics.READY.set_function(lambda: 1.0 if self.is_ready() else 0.0)
        metrics.STORE.labels(settings.api_store).set(1)

    def _lag(self) -> float:
        last = self.index.last_event_at
        return 0.0 if last is None else max(0.0, time.time() - last)

    def is_ready(self) -> bool:
        # A broker outage after start does not take the API out of service: clients get 503 +
        # Retry-After on submit and reads keep working from the index.
        return self.rebuilt.is_set()

    def identity(self) -> dict[str, Any]:
        return {"role": "api", "instance": self.settings.worker_id}

    def status(self) -> dict[str, Any]:
        return {
            "role": "api",
            "ready": self.is_ready(),
            "broker_connected": self.queue.broker.connected.is_set(),
            "rebuild_seconds": self.rebuild_seconds,
            "auth": self.auth is not None,
            "index": self.store.info(),
            "uptime_seconds": round(time.time() - self.started, 3),
        }

    async def start(self, stop: asyncio.Event) -> bool:
        """Connect (with backoff) and rebuild the index; False if asked to stop first."""
        started = time.monotonic()
        marker = uuid.uuid4().hex
        self.index.marker = marker
        self.index.on_marker.append(self.rebuilt.set)
        if not await connect_with_backoff(self.queue.connect, "api", stop):
            return False
        # The broker may go away again right after the connect (the drills close every connection): the
        # fleet view's subscription is retried like the connect, while the robust connection comes back.
        if not await connect_with_backoff(lambda: self.fleet.follow(self.queue.broker), "api fleet view", stop):
            return False
        if not isinstance(self.store, IndexStore):
            return await self._open_store(stop, started)
        body = orjson.dumps({"type": "marker", "marker": marker, "at": time.time()})
        while not stop.is_set():
            try:
                await self.queue.broker.publish_events([(body, {KIND: MARKER, MARKER_ID: marker})])
                break
            except Exception as exc:  # the broker went away between connect and now
                log.warning("api: cannot publish the start marker yet: %s", type(exc).__name__)
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
        waiter = asyncio.ensure_future(self.rebuilt.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        if not self.rebuilt.is_set():
            return False
        self.rebuild_seconds = time.monotonic() - started
        self.store.ready = True
        rate = self.index.events / self.rebuild_seconds if self.rebuild_seconds else 0.0
        log.info(
            "api ready: index rebuilt from %d events (%d jobs) in %.3fs, %.0f events/s",
            self.index.events,
            len(self.index),
            self.rebuild_seconds,
            rate,
        )
        return True

    async def _open_store(self, stop: asyncio.Event, started: float) -> bool:
        """PostgreSQL: ready once it answers (nothing to rebuild)."""
        from .pgstore import PostgresStore, open_with_backoff

        assert isinstance(self.store, PostgresStore)
        if not await open_with_backoff(self.store, stop):
            return False
        self.rebuild_seconds = time.monotonic() - started
        self.store.ready = True
        self.rebuilt.set()
        log.info("api ready: operation store on PostgreSQL in %.3fs", self.rebuild_seconds)
        return True

    async def stop(self) -> None:
        if not isinstance(self.store, IndexStore):
            await self.store.close()  # type: ignore[attr-defined]
        self.store.ready = False
        self.rebuilt.clear()
        await self.queue.disconnect()  # bounded, and it ends the fleet view's subscription with the connection


def dev_banner(settings: ApiSettings, process: ApiProcess) -> str:
    base = f"http://{settings.api_host}:{settings.api_port}"
    auth = (
        f"auth: bearer tokens from {settings.api_tokens_file}"
        if process.auth is not None
        else "auth: OFF (no CPW_API_TOKENS_FILE): anyone who can reach this port can submit jobs"
    )
    header = "" if process.auth is None else " -H 'Authorization: Bearer <token>'"
    resource = "/subscriptions/demo/resourceGroups/rg1/providers/Demo.Compute/virtualMachines/vm1"
    return "\n".join(
        [
            "",
            f"  controlplane-workers dev platform: API on {base} (broker {settings.rabbitmq_url})",
            f"  {auth}",
            f"  ops routes on the same port: {base}/health/ready, {base}/metrics;  OpenAPI: {base}/openapi.json",
            "",
            "  create a demo VM (201 + Location), then poll its operation:",
            f"    curl -si -X PUT{header} -H 'Content-Type: application/json' \\",
            f"      '{base}{resource}?api-version=2024-01-01' \\",
            '      -d \'{"location": "westeurope", "properties": {"vmSize": "Standard_D2s_v5"}}\'',
            f"    curl -s{header} '{base}/operations/<jobId from the answer>?api-version=2024-01-01'",
            "  or wait for it in one call:",
            f"    curl -s -X PUT{header} -H 'Content-Type: application/json' \\",
            f"      '{base}{resource}?api-version=2024-01-01&wait=10' -d '{{\"location\": \"westeurope\"}}'",
            "",
        ]
    )


async def serve_api(settings: ApiSettings, stop: asyncio.Event, *, banner: bool = False) -> ApiProcess:
    """Serve until `stop` is set. banner=True is `cpw dev`: ops routes on the public port, no auth
    unless tokens are set, and the URL and a curl example printed."""
    dev = banner
    process = ApiProcess(settings, dev=dev)
    limits = HttpLimits(settings.http_max_header_bytes, settings.http_header_timeout, settings.api_max_connections)
    public = server(process.app, settings.api_host, settings.api_port, limits=limits, log_level="warning")
    servers = [public]
    if not dev:
        servers.append(server(process.ops, settings.health_host, settings.health_port, limits=ops_limits(settings)))
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    if dev:
        print(dev_banner(settings, process), file=sys.stderr, flush=True)
    try:
        await process.start(stop)
        await stop.wait()
    finally:
        for s in servers:
            s.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await process.stop()
    return process


def run_api(settings: ApiSettings) -> int:
    """`cpw api`: refuse to serve without tokens unless CPW_API_ALLOW_ANONYMOUS says so."""
    if settings.api_tokens_file is None and not settings.api_allow_anonymous:
        print(
            "cpw api: configuration error: CPW_API_TOKENS_FILE is not set; set it, or set "
            "CPW_API_ALLOW_ANONYMOUS=true to serve without authentication",
            file=sys.stderr,
        )
        return 2
    try:
        if settings.api_tokens_file is not None:
            TokenAuth(settings.api_tokens_file)
    except TokenFileError as exc:
        print(f"cpw api: configuration error: CPW_API_TOKENS_FILE: {exc}", file=sys.stderr)
        return 2
    if settings.api_tokens_file is None:
        log.warning("api: serving WITHOUT authentication (CPW_API_ALLOW_ANONYMOUS=true)")
    tracing.setup_from_env("cpw-api", instance_id=settings.worker_id, version=__version__)
    gcpolicy.install()  # no full-GC pause proportional to the status index (controlplane_workers/gcpolicy.py)

    return run_process("cpw api", lambda stop: serve_api(settings, stop))
