"""The ARM resource routes that change something: PUT, PATCH, DELETE and POST action, each offloaded.

PUT answers 201 with the resource in provisioningState Accepted; the others 202 with the job. All
carry Location / Azure-AsyncOperation / Retry-After to poll. With ?wait=N the answer is the outcome
if it comes in time. The GETs are in reads.py: they answer synchronously.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controlplane_workers.models import Operation

from ..context import ApiContext, ApiRoute, Caller
from ..params import api_version, segment
from ..schemas import ActionBody, PatchBody, ResourceBody
from ..submission import Submission, submit
from ..views import final_response, json_response

COLLECTION = "/subscriptions/{subscription}/resourceGroups/{resourceGroup}/providers/{namespace}/{type}"
RESOURCE = COLLECTION + "/{name}"
ACTION = RESOURCE + "/{action}"


def resource_request(
    request: Request, version: str, *, body: dict[str, Any], named: bool = True, action: str | None = None
) -> dict[str, Any]:
    """The provider's ResourceRequest (as a dict) from the path, validated segment by segment."""
    return {
        "subscription_id": segment(request, "subscription"),
        "resource_group": segment(request, "resourceGroup"),
        "provider_namespace": segment(request, "namespace"),
        "resource_type": segment(request, "type"),
        "resource_name": segment(request, "name") if named else "",
        "location": None,  # a PUT's comes from its body
        "body": body,
        "action": action,
        "api_version": version,
    }


async def put_resource(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    version = api_version(request)
    req = resource_request(request, version, body={})
    body, raw = await ctx.read_json(request, ResourceBody, required=True)
    req["body"], req["location"] = body, body.get("location")
    ns, rtype, name = req["provider_namespace"], req["resource_type"], req["resource_name"]

    async def answer(job_id: str, wait: float) -> Response:
        if wait:
            record = await ctx.store.wait(job_id, wait)
            if record is not None:
                return final_response(record, Operation.CREATE)
        accepted = {
            "id": f"/subscriptions/{req['subscription_id']}/resourceGroups/{req['resource_group']}"
            f"/providers/{ns}/{rtype}/{name}",
            "name": name,
            "type": f"{ns}/{rtype}",
            "location": body.get("location"),
            "properties": {**(body.get("properties") or {}), "provisioningState": "Accepted"},
            "jobId": job_id,
        }
        if body.get("tags") is not None:
            accepted["tags"] = body["tags"]
        return json_response(accepted, 201, ctx.poll_headers(request, job_id, version))

    return await submit(ctx, request, caller, Submission(Operation.CREATE, ns, rtype, req, raw), answer)


async def offload(
    request: Request, ctx: ApiContext, caller: Caller, operation: Operation, req: dict[str, Any], raw: bytes
) -> Response:
    """Submit `operation` and answer 202 with the job, or its outcome within ?wait."""
    version = req["api_version"]

    async def answer(job_id: str, wait: float) -> Response:
        if wait:
            record = await ctx.store.wait(job_id, wait)
            if record is not None:
                return final_response(record, operation)
        return json_response(
            {"jobId": job_id, "status": "Accepted", "operation": operation.value},
            202,
            ctx.poll_headers(request, job_id, version),
        )

    job = Submission(operation, req["provider_namespace"], req["resource_type"], req, raw)
    return await submit(ctx, request, caller, job, answer)


async def delete_resource(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    req = resource_request(request, api_version(request), body={})
    return await offload(request, ctx, caller, Operation.DELETE, req, b"")


async def patch_resource(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    """A JSON merge patch of the resource: the provider's update_resource, or get + merge + create_or_update
    (controlplane_workers.providers); 202 and polled like PUT, 200 with the resource within ?wait."""
    version = api_version(request)
    req = resource_request(request, version, body={})
    body, raw = await ctx.read_json(request, PatchBody, required=True)
    req["body"], req["location"] = body, body.get("location")
    return await offload(request, ctx, caller, Operation.UPDATE, req, raw)


async def post_action(request: Request, ctx: ApiContext, caller: Caller) -> Response:
    version = api_version(request)
    req = resource_request(request, version, body={}, action=segment(request, "action"))
    body, raw = await ctx.read_json(request, ActionBody, required=False)
    req["body"] = body
    return await offload(request, ctx, caller, Operation.ACTION, req, raw)


ROUTES = [
    ApiRoute(RESOURCE, "PUT", put_resource, "Resources_CreateOrUpdate"),
    ApiRoute(RESOURCE, "PATCH", patch_resource, "Resources_Update"),
    ApiRoute(RESOURCE, "DELETE", delete_resource, "Resources_Delete"),
    ApiRoute(ACTION, "POST", post_action, "Resources_Action"),
]
