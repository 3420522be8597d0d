"""/deadLetters: operators list, redrive and discard dead-lettered jobs (every tenant's).

Only an operator's token (auth.py) reaches them; a tenant's gets the 404 of a path that does not
exist. Each request is one walk of the dead-letter queue (controlplane_workers.dlq): a page is a
position in the queue, and walks never overlap, so two redrives of one letter publish one job.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controlplane_workers import dlq
from controlplane_workers.errors import BrokerUnavailable, DeadLettersBusy, UnroutableJob

from ..context import ApiContext, ApiRoute, Caller
from ..errors import ApiError, not_found
from ..params import job_id, page_size, skip_offset
from ..views import dead_letter_view, json_response


def _unavailable(ctx: ApiContext, exc: Exception) -> ApiError:
    if isinstance(exc, DeadLettersBusy):
        return ctx.unavailable("Another operator's request is walking the dead letters; nothing was done. Retry.")
    return ctx.unavailable("The job broker is unavailable; nothing was done. Retry later.")


async def list_dead_letters(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    """Oldest first, `top` a page; nextLink carries the position of the next page."""
    ctx.require_operator(caller)
    top, offset = page_size(request), skip_offset(request)
    try:
        letters, more = await dlq.page_dead_letters(ctx.queue.broker, offset, top)
    except BrokerUnavailable as exc:
        raise _unavailable(ctx, exc) from None
    next_link = f"{ctx.base_url(request)}/deadLetters?top={top}&skipToken={offset + top}" if more else None
    return json_response({"value": [dead_letter_view(d) for d in letters], "nextLink": next_link})


async def _settle(request: Request, ctx: ApiContext, caller: Caller, send_again: bool) -> dict[str, Any]:
    ctx.require_operator(caller)
    wanted = job_id(request)
    try:
        info = await dlq.settle_one(ctx.queue.broker, wanted, send_again=send_again)
    except BrokerUnavailable as exc:
        raise _unavailable(ctx, exc) from None
    except UnroutableJob:
        raise ApiError(
            409, "Conflict", "The broker routes this job to no queue; the dead letter was kept.", reason="conflict"
        ) from None
    if info is None:
        raise not_found(f"There is no dead letter of the job '{wanted}'.", "DeadLetterNotFound")
    return dead_letter_view(info)


async def redrive(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    """Publish the job again (confirmed), attempts reset, then remove the dead letter; the job's
    operation goes back to Accepted and runs afresh."""
    return json_response(await _settle(request, ctx, caller, send_again=True))


async def discard(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    """Remove the dead letter for good; the job stays Failed."""
    await _settle(request, ctx, caller, send_again=False)
    return Response(status_code=204)


ROUTES = [
    ApiRoute("/deadLetters", "GET", list_dead_letters, "DeadLetters_List"),
    ApiRoute("/deadLetters/{id}/redrive", "POST", redrive, "DeadLetters_Redrive"),
    ApiRoute("/deadLetters/{id}", "DELETE", discard, "DeadLetters_Discard"),
]
