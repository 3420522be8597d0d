"""The ARM operation routes a client polls: the status resource and the final result."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from controlplane_workers.models import Operation

from ..context import ApiContext, ApiRoute, Caller
from ..params import optional_api_version
from ..views import final_response, json_response, operation_status


async def get_operation(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    """Azure-AsyncOperation: the operation status resource, 200 while it exists. Retry-After while it runs:
    without one, ARM clients (azure-core's ARMPolling) wait their default 30 s between polls."""
    record = await ctx.lookup(request.path_params["id"], caller.tenant)
    headers = None if record.terminal else {"Retry-After": ctx.retry_after}
    return json_response(operation_status(record), headers=headers)


async def get_operation_result(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    """Location: 202 while the job runs, then the answer the synchronous call would have given."""
    job_id = request.path_params["id"]
    version = optional_api_version(request)  # copied into Location: validated first
    record = await ctx.lookup(job_id, caller.tenant)
    if not record.terminal:
        wait = ctx.wait_for(request)
        if wait:
            record = await ctx.store.wait(job_id, wait) or record
    if record.terminal:
        return final_response(record, record.operation)
    return json_response(
        {"jobId": job_id, "status": record.status.value, "operation": (record.operation or Operation.ACTION).value},
        202,
        ctx.poll_headers(request, job_id, version),
    )


ROUTES = [
    ApiRoute("/operations/{id}", "GET", get_operation, "Operations_Get"),
    ApiRoute("/operationResults/{id}", "GET", get_operation_result, "Operations_Result"),
]
