"""Submitting a job: the per-tenant cap, the confirmed publish, then the route's answer.

202/201 is answered only after the broker confirmed the job. An Idempotency-Key replays the first
success (idempotency.py) instead of making a second job.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from controlplane_workers import tracing
from controlplane_workers.errors import BrokerUnavailable, UnroutableJob
from controlplane_workers.ids import new_job_id
from controlplane_workers.models import Job, Operation

from . import metrics, params
from .context import ApiContext, Caller, check_subscription
from .errors import ApiError
from .idempotency import Remembered, fingerprint, key_reused, shared_key
from .ratelimit import retry_after

# The route's answer once the job is accepted: (job id, seconds the client asked to wait) -> response.
Answer = Callable[[str, float], Awaitable[Response]]


@dataclass
class Submission:
    """A job as a route read it from the request."""

    operation: Operation
    namespace: str
    resource_type: str
    request: dict[str, Any]  # the provider's ResourceRequest, as a dict
    raw_body: bytes  # what the client sent: it is part of the Idempotency-Key's fingerprint
    priority: int | None = None  # None: from x-ms-priority / ?priority= / the operation's default
    delay: float | None = None  # None: from x-cpw-delay / ?delay= / no delay


async def submit(ctx: ApiContext, request: Request, caller: Caller, job: Submission, answer: Answer) -> Response:
    """Publish the job (confirmed), then answer; an Idempotency-Key answers again for the job it made.

    Every route that makes a job comes through here, so this is where the caller's subscriptions are
    checked: a subscription its token does not hold makes no job and reaches no provider."""
    check_subscription(caller, str(job.request.get("subscription_id") or ""))
    tenant = caller.tenant
    key = params.idempotency_key(request)
    if key is None:
        return await _publish(ctx, request, tenant, job, answer, None)
    cache, cache_key = ctx.idempotency, (tenant, key)
    fp = fingerprint(request, job.raw_body)
    shared = shared_key(tenant, key)
    while True:
        entry = cache.get(cache_key)
        if entry is None:
            # Not submitted here: maybe on another replica, or before this process restarted.
            seen = await ctx.store.idempotent(shared)
            if seen is not None and time.time() - seen[2] < cache.window:
                if seen[1] != fp:
                    raise key_reused()
                return await replay(ctx, request, seen[0], answer)
            entry = cache.begin(cache_key, fp)
            break
        if entry.fingerprint != fp:
            raise key_reused()
        if entry.job_id is None:
            await entry.done.wait()  # the first request with this key is still in progress
            continue
        return await replay(ctx, request, entry.job_id, answer)
    try:
        return await _publish(ctx, request, tenant, job, answer, entry, (shared, fp))
    finally:
        if entry.job_id is None:  # nothing was published: a retry may submit
            cache.forget(cache_key, entry)


async def _publish(
    ctx: ApiContext,
    request: Request,
    tenant: str | None,
    job: Submission,
    answer: Answer,
    entry: Remembered | None,
    idempotency: tuple[str, str] | None = None,
) -> Response:
    prio = params.priority(request, job.operation) if job.priority is None else job.priority
    delay = params.delay(request, ctx.settings.job_max_delay) if job.delay is None else job.delay
    wait = ctx.wait_for(request)
    now = time.time()
    job_id = new_job_id(now)
    _pace(ctx, tenant)
    cap = ctx.settings.api_tenant_max_queued
    if not await ctx.store.reserve(tenant, job_id, cap):
        raise ApiError(
            429,
            "TooManyRequests",
            f"This tenant has {cap} jobs queued or running; retry later.",
            reason="rate_limited",
            headers={"Retry-After": ctx.retry_after},
        )
    try:
        await _send(ctx, tenant, job, job_id, prio, now, idempotency, delay)
    finally:
        ctx.store.release(job_id)  # failed: the slot is free again; confirmed: the index counts the job
    metrics.count_submission(job.operation.value, prio)
    if entry is not None:  # published: from now on the key means this job, whatever the answer says
        entry.keep(job_id)
    return await answer(job_id, wait)


def _pace(ctx: ApiContext, tenant: str | None) -> None:
    """429 + Retry-After when `tenant` submits faster than its rate (ratelimit.py): checked before the
    queued-jobs cap, so a flood is refused before it takes a slot or reaches the broker."""
    delay = ctx.tenant_rate.take(tenant)
    if delay:
        metrics.count_rate_limited(tenant)
        s = ctx.settings
        raise ApiError(
            429,
            "TooManyRequests",
            f"This tenant submits more than {s.api_tenant_rate:g} jobs a second (bursts of {s.api_tenant_burst});"
            " retry after Retry-After.",
            reason="tenant_rate",
            headers={"Retry-After": retry_after(delay)},
        )


async def replay(ctx: ApiContext, request: Request, job_id: str, answer: Answer) -> Response:
    """The answer for the job an earlier request with the same key made, marked as a replay."""
    response = await answer(job_id, ctx.wait_for(request))
    response.headers["Idempotent-Replayed"] = "true"
    return response


async def _send(
    ctx: ApiContext,
    tenant: str | None,
    job: Submission,
    job_id: str,
    prio: int,
    now: float,
    idempotency: tuple[str, str] | None,
    delay: float | None = None,
) -> None:
    """Validate the job as the workers will read it and publish it, confirmed."""
    if tracing.enabled:  # the HTTP request's span names the job it submitted
        tracing.set_attributes({"cpw.job.id": job_id})
    message = {
        "id": job_id,
        "provider_namespace": job.namespace,
        "resource_type": job.resource_type,
        "operation": job.operation.value,
        "request": job.request,
        "priority": prio,
        "submitted_at": now,
        "tenant": tenant,
    }
    if delay:
        message["not_before"] = now + delay
    # One validation in pydantic-core (~8 us) instead of two model_construct calls (~45 us:
    # model_construct asks inspect.signature about ResourceRequest.body's default factory on
    # every call). The routes validated their input already; this also checks the job as
    # the workers will read it.
    try:
        accepted = Job.model_validate(message)
    except ValidationError as exc:
        raise params.validation_error(exc) from None
    try:
        await ctx.queue.submit_encoded(orjson.dumps(message), accepted, idempotency=idempotency)
    except (BrokerUnavailable, UnroutableJob):
        raise ctx.unavailable("The job broker is unavailable; nothing was accepted. Retry later.") from None
    await ctx.store.accepted(accepted, idempotency)
