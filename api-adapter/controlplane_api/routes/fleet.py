"""The fleet and the queue as the API sees them: /workers (heartbeats) and /stats."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..context import ApiContext, ApiRoute, Caller
from ..views import json_response


async def workers(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    return json_response(ctx.fleet.get_registry_status())


async def stats(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    try:
        q = await ctx.queue.get_queue_stats()
    except Exception:
        raise ctx.unavailable("The job broker is unavailable; queue statistics cannot be read.") from None
    fleet = ctx.fleet.get_registry_status()
    return json_response(
        {
            "ready": q.ready,
            "unacked": max(q.unacked, int(fleet["in_flight"])),
            "deadLetters": q.dead_letters,
            "retrying": q.retrying + int(fleet["retries_held"]),  # the queues count no retry a worker holds
            "delayed": q.delayed,
            "consumers": q.consumers,
            "inFlight": int(fleet["in_flight"]),
            "jobs": await ctx.store.counts(caller.tenant),
            "index": ctx.store.info(),
        }
    )


ROUTES = [
    ApiRoute("/workers", "GET", workers, "Fleet_Get"),
    ApiRoute("/stats", "GET", stats, "Stats_Get"),
]
