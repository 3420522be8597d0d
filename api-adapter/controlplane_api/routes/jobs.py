"""/jobs: submit a job for any provider, read, list and cancel jobs."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controlplane_workers.errors import BrokerUnavailable
from controlplane_workers.models import Operation

from .. import params
from ..context import ApiContext, ApiRoute, Caller
from ..errors import ApiError
from ..params import page_size, status_filter
from ..schemas import JobSubmission
from ..submission import Submission, submit
from ..views import job_view, json_response


async def post_job(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    data, raw = await ctx.read_json(request, JobSubmission, required=True)
    ns, rtype = data["namespace"], data["type"]
    req: dict[str, Any] = {
        "subscription_id": "",
        "resource_group": "",
        "resource_name": "",
        "location": None,
        "body": {},
        "action": None,
        "api_version": None,
        **(data.get("request") or {}),
        "provider_namespace": ns,
        "resource_type": rtype,
    }

    async def answer(job_id: str, wait: float) -> Response:
        record = await ctx.store.wait(job_id, wait) if wait else None
        # ctx.lookup: a replay of a key whose job has since left the index answers 404 OperationExpired
        record = record or await ctx.lookup(job_id, caller.tenant)
        base = ctx.base_url(request)
        headers = {
            "Location": f"{base}/jobs/{job_id}",
            "Azure-AsyncOperation": f"{base}/operations/{job_id}",
            "Retry-After": ctx.retry_after,
        }
        return json_response(job_view(record), 200 if record.terminal else 202, headers)

    delay = params.delay(request, ctx.settings.job_max_delay, data.get("delay"))
    job = Submission(Operation(data["operation"]), ns, rtype, req, raw, data.get("priority"), delay)
    return await submit(ctx, request, caller, job, answer)


async def get_job(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    return json_response(job_view(await ctx.lookup(request.path_params["id"], caller.tenant)))


async def cancel_job(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    """Idempotent while the job runs; 409 once it has ended."""
    job_id = request.path_params["id"]
    record = await ctx.lookup(job_id, caller.tenant)
    if record.terminal:
        raise ApiError(
            409, "Conflict", f"The job '{job_id}' has already finished as {record.status.value}.", reason="conflict"
        )
    wait = ctx.wait_for(request)
    try:
        await ctx.queue.cancel_job(job_id, reason="canceled through the API", job=record)
    except BrokerUnavailable:
        raise ctx.unavailable("The job broker is unavailable; the cancel was not sent. Retry later.") from None
    if wait:
        record = await ctx.store.wait(job_id, wait) or record
    return json_response(job_view(record), 200 if record.terminal else 202, {"Retry-After": ctx.retry_after})


async def list_jobs(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    """This tenant's jobs, newest first, `top` a page; nextLink carries the skipToken."""
    status = status_filter(request)
    top = page_size(request)
    records, last = await ctx.store.page(caller.tenant, status, top, request.query_params.get("skipToken"))
    next_link = None
    if last is not None:
        query = f"top={top}&skipToken={last}" + (f"&status={status.value}" if status else "")
        next_link = f"{ctx.base_url(request)}/jobs?{query}"
    return json_response({"value": [job_view(r) for r in records], "nextLink": next_link})


ROUTES = [
    ApiRoute("/jobs", "POST", post_job, "Jobs_Submit"),
    ApiRoute("/jobs", "GET", list_jobs, "Jobs_List"),
    ApiRoute("/jobs/{id}", "GET", get_job, "Jobs_Get"),
    ApiRoute("/jobs/{id}", "DELETE", cancel_job, "Jobs_Cancel"),
]
