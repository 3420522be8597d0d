"""The public API app: the route table (routes/), authentication, and the error handlers.

The request path is kept lean: bodies are parsed with orjson, pydantic only validates input, jobs
are serialised straight from dicts, and answers are orjson bytes. Every answer other than success
is an ARM error (`errors.ApiError`); nothing else, and never a stack trace, reaches a client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from . import metrics, rpc
from .context import ANONYMOUS, ApiContext, ApiRoute, Caller
from .errors import JSON, NO_ROUTE, ApiError, arm_error_body, internal_error
from .routes import ROUTES
from .views import json_response

log = logging.getLogger("controlplane_api")


def endpoint(ctx: ApiContext, route: ApiRoute) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of `route`: authenticate, wait for the index, answer, count."""
    handler, template, public = route.handler, route.path, route.public

    async def call(request: Request) -> Response:
        started = time.perf_counter()
        try:
            caller = ANONYMOUS if public else ctx.authenticate(request)
            if not public and not ctx.store.ready:
                raise ctx.unavailable("The API is starting: its status index is being rebuilt.")
            response = await handler(request, ctx, caller)
        except ApiError as exc:
            if exc.reason:
                metrics.count_rejection(exc.reason)
            response = exc.response()
        except Exception:
            ids = rpc.current.get()
            log.exception(
                "unhandled error answering %s %s", request.method, template, extra=ids.log_fields() if ids else None
            )
            response = internal_error()
        metrics.observe_request(template, request.method, response.status_code, time.perf_counter() - started)
        return response

    return call


async def openapi(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    return json_response(ctx.openapi)


OPENAPI = ApiRoute("/openapi.json", "GET", openapi, "OpenApi_Get", public=True)


async def http_error(request: Request, exc: Exception) -> Response:
    """No route matched, or the method is not allowed: an ARM error, counted."""
    assert isinstance(exc, HTTPException)
    code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "BadRequest")
    message = {404: NO_ROUTE, 405: "This method is not allowed on this path."}.get(
        exc.status_code, "The request was not understood."
    )
    if exc.status_code == 404:
        metrics.count_rejection("not_found")
    metrics.observe_request("<unmatched>", request.method, exc.status_code, 0.0)
    return Response(
        orjson.dumps(arm_error_body(code, message)),
        status_code=exc.status_code,
        headers=dict(exc.headers or {}),
        media_type=JSON,
    )


async def server_error(request: Request, exc: Exception) -> Response:
    ids = rpc.current.get()
    log.error("unhandled error: %s", type(exc).__name__, extra=ids.log_fields() if ids else None)
    return internal_error()


def build_app(ctx: ApiContext, *, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The public app. `extra_routes` (cpw dev: the ops routes) are served unauthenticated. Every answer
    carries the ARM request id headers (rpc.py)."""
    routes: list[BaseRoute] = [Route(r.path, endpoint(ctx, r), methods=[r.method]) for r in (*ROUTES, OPENAPI)]
    return Starlette(
        routes=[*routes, *extra_routes],
        middleware=[Middleware(rpc.ArmHeaders)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
