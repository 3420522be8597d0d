"""The ops port (8001): health probes, status and Prometheus metrics, for worker and API alike."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .httplimits import HttpLimits, limited_protocol
from .settings import Settings


def ops_app(
    *,
    is_ready: Callable[[], bool],
    status: Callable[[], dict[str, Any]],
    identity: Callable[[], dict[str, Any]],
    registries: Sequence[CollectorRegistry] = (),
    is_alive: Callable[[], bool] = lambda: True,
) -> Starlette:
    """Liveness says the loop answers and the process is not wedged (`is_alive`: a restart would help);
    readiness says the process takes work.

    /metrics serves prometheus-client's default registry plus the component's own `registries`.
    """

    async def live(_: Request) -> Response:
        if is_alive():
            return JSONResponse({"status": "alive"})
        return JSONResponse({"status": "wedged"}, status_code=503)

    async def ready(_: Request) -> Response:
        ok = is_ready()
        return JSONResponse({"status": "ready" if ok else "not-ready"}, status_code=200 if ok else 503)

    async def health(_: Request) -> Response:
        ok = is_ready()
        body = {"status": "healthy" if ok else "unhealthy", **identity()}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def status_route(_: Request) -> Response:
        return JSONResponse(status())

    async def metrics(_: Request) -> Response:
        body = generate_latest(REGISTRY) + b"".join(generate_latest(r) for r in registries)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/health", health),
            Route("/status", status_route),
            Route("/metrics", metrics),
        ]
    )


def ops_limits(settings: Settings) -> HttpLimits:
    return HttpLimits(settings.http_max_header_bytes, settings.http_header_timeout, settings.ops_max_connections)


class PortTaken(Exception):
    """A port this process must serve cannot be opened: it exits 2 with one line, before any work."""


def listen(host: str, port: int, what: str) -> socket.socket:
    """Bind `host:port` now, so a taken port stops the process before it consumes a job."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortTaken(f"{what} {host}:{port} cannot be opened: {exc.strerror}") from None
    return sock


def server(
    app: Any, host: str, port: int, *, limits: HttpLimits | None = None, log_level: str = "warning"
) -> uvicorn.Server:
    """A uvicorn server that runs inside the caller's loop and leaves signals to the caller.

    Both ports answer before authentication, so each bounds its header size and time and its connections
    (`limits`; see httplimits.py): past `max_connections`, requests answer 503.
    """
    limits = limits or HttpLimits()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        lifespan="off",
        loop="none",
        http=limited_protocol(limits),
        ws="none",
        limit_concurrency=limits.max_connections,
    )
    server = uvicorn.Server(config)
    # uvicorn captures SIGTERM/SIGINT in serve() through capture_signals(): the ops port then closed
    # on SIGTERM, so a draining worker answered neither /health/ready nor /status.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    return server
