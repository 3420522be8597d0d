"""Resource and collection GETs, answered synchronously as every ARM client expects.

They still run as offloaded `get`/`list` jobs (the highest default priorities, so they jump the
queue); the API waits for the outcome within CPW_API_SYNC_TIMEOUT (or a longer ?wait=) and
answers 200 with the resource or a page `{value, nextLink}`, or the ARM error of the job. When the
budget runs out: 504 GatewayTimeout + Retry-After, never a 202 whose body a client would take for
the resource. `Prefer: respond-async` asks for the asynchronous form (202 + Location) instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from controlplane_workers.models import JobResult, JobStatus, Operation

from ..context import ApiContext, ApiRoute, Caller
from ..errors import gateway_timeout
from ..params import api_version, collection_page, respond_async
from ..submission import Submission, submit
from ..views import failure_response, final_response, json_response, list_items
from .resources import COLLECTION, RESOURCE, offload, resource_request


async def get_resource(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    req = resource_request(request, api_version(request), body={})
    if respond_async(request):
        return await offload(request, ctx, caller, Operation.GET, req, b"")
    return await _synchronous(request, ctx, caller, Operation.GET, req, _resource)


def _resource(record: JobResult) -> Response:
    return final_response(record, Operation.GET)


async def list_resources(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    version = api_version(request)
    req = resource_request(request, version, body={}, named=False)
    if respond_async(request):
        return await offload(request, ctx, caller, Operation.LIST, req, b"")
    offset, size = collection_page(request)

    def page(record: JobResult) -> Response:
        if record.status is not JobStatus.SUCCEEDED:
            return failure_response(record)
        items = list_items(record.result)
        body: dict[str, Any] = {"value": items[offset : offset + size], "nextLink": None}
        if offset + size < len(items):
            query = urlencode({"api-version": version, "$top": size, "$skiptoken": offset + size})
            body["nextLink"] = f"{ctx.base_url(request)}{request.scope['path']}?{query}"
        return json_response(body)

    return await _synchronous(request, ctx, caller, Operation.LIST, req, page)


async def _synchronous(
    request: Request,
    ctx: ApiContext,
    caller: Caller,
    operation: Operation,
    req: dict[str, Any],
    respond: Callable[[JobResult], Response],
) -> Response:
    """Submit the job and answer with its outcome within the budget; 504 + Retry-After past it."""

    async def answer(job_id: str, wait: float) -> Response:
        budget = max(wait, ctx.settings.api_sync_timeout)  # ?wait= may lengthen the budget, never shorten it
        record = await ctx.store.wait(job_id, budget)
        if record is None:
            raise gateway_timeout(
                f"The provider did not answer within {budget:g} s (operation {job_id}); retry later.",
                ctx.retry_after,
            )
        return respond(record)

    job = Submission(operation, req["provider_namespace"], req["resource_type"], req, b"", delay=0.0)  # never delayed
    return await submit(ctx, request, caller, job, answer)


ROUTES = [
    ApiRoute(RESOURCE, "GET", get_resource, "Resources_Get"),
    ApiRoute(COLLECTION, "GET", list_resources, "Resources_List"),
]
