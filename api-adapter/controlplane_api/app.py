"""The public API: ARM resource routes answered by the worker fleet, operations, jobs, fleet, stats.

The request path is kept lean: bodies are parsed with orjson, pydantic only validates input, jobs
are serialised straight from dicts, and answers are orjson bytes. Every answer other than success
is an ARM error (`errors.ApiError`); nothing else, and never a stack trace, reaches a client.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from controlplane_workers import tracing
from controlplane_workers.errors import BrokerUnavailable, UnroutableJob
from controlplane_workers.fleet import WorkerRegistry
from controlplane_workers.models import Job, JobResult, JobStatus, Operation
from controlplane_workers.offloading import DEFAULT_PRIORITY
from controlplane_workers.queue import JobQueue
from controlplane_workers.settings import Settings

from . import metrics
from .auth import TokenAuth
from .errors import JSON, ApiError, arm_error_body, internal_error, invalid, not_found
from .schemas import API_VERSION, IDEMPOTENCY_KEY, SEGMENT, ActionBody, JobSubmission, ResourceBody
from .store import OperationStore, new_job_id

log = logging.getLogger("controlplane_api")

RESOURCE = "/subscriptions/{subscription}/resourceGroups/{resourceGroup}/providers/{namespace}/{type}/{name}"
ACTION = RESOURCE + "/{action}"
COLLECTION = "/subscriptions/{subscription}/resourceGroups/{resourceGroup}/providers/{namespace}/{type}"

_SEGMENT = re.compile(SEGMENT.strip("^$"))
_API_VERSION = re.compile(API_VERSION.strip("^$"))
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY.strip("^$"))
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*([^,;\s]+)", re.IGNORECASE)
_PERCENT = {JobStatus.ACCEPTED: 0.0, JobStatus.RUNNING: 50.0}
_PAGE_MAX = 1000

# The HTTP status of a failed operation's final answer, by the ARM error code the provider chose.
ERROR_STATUS = {
    "ResourceNotFound": 404,
    "NotFound": 404,
    "InvalidRequest": 400,
    "BadRequest": 400,
    "InvalidAction": 400,
    "InvalidParameter": 400,
    "Conflict": 409,
    "Forbidden": 403,
    "Canceled": 409,
    "UnknownProvider": 400,
    "Malformed": 400,
    "PoisonMessage": 400,
}


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1_000_000):06d}Z"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=JSON)


def error_of(record: JobResult) -> dict[str, Any] | None:
    if record.error is None:
        if record.status is JobStatus.CANCELED:
            return {"code": "Canceled", "message": "the operation was canceled", "details": []}
        return None
    return {"code": record.error.code, "message": record.error.message, "details": []}


def shared_key(tenant: str | None, key: str) -> str:
    """The Idempotency-Key as it travels on the results stream: hashed with its tenant, so keys are
    per tenant and a client's key is not written out as it came."""
    return hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()[:32]


def key_reused() -> ApiError:
    return ApiError(
        422,
        "IdempotencyKeyReused",
        "This Idempotency-Key was used with another request; use a new key.",
        details=[
            {
                "code": "IdempotencyKeyReused",
                "target": "Idempotency-Key",
                "message": "the same key came with another method, path or body",
            }
        ],
        reason="conflict",
    )


@dataclass
class _Remembered:
    fingerprint: str
    at: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    response: tuple[int, bytes, dict[str, str]] | None = None


class IdempotencyCache:
    """(tenant, Idempotency-Key) -> the first success answered for it, for `window` seconds."""

    def __init__(self, window: float, max_entries: int = 200_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self.entries: OrderedDict[tuple[str | None, str], _Remembered] = OrderedDict()

    def _expire(self, now: float) -> None:
        entries = self.entries
        while entries:
            key, oldest = next(iter(entries.items()))
            if now - oldest.at < self.window and len(entries) <= self.max_entries:
                break
            del entries[key]

    def get(self, key: tuple[str | None, str]) -> _Remembered | None:
        self._expire(time.time())
        return self.entries.get(key)

    def begin(self, key: tuple[str | None, str], fingerprint: str) -> _Remembered:
        entry = self.entries[key] = _Remembered(fingerprint, time.time())
        return entry

    def forget(self, key: tuple[str | None, str], entry: _Remembered) -> None:
        if self.entries.get(key) is entry:
            del self.entries[key]
        entry.done.set()


class ApiContext:
    """What the routes share: settings, the queue, the store, the fleet view and the token map."""

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        store: OperationStore,
        fleet: WorkerRegistry,
        auth: TokenAuth | None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.store = store
        self.fleet = fleet
        self.auth = auth
        self.idempotency = IdempotencyCache(settings.api_idempotency_window)
        self.retry_after = str(settings.api_retry_after)
        self.public_url = settings.api_public_url.rstrip("/") if settings.api_public_url else None

    # -- request helpers
    def authenticate(self, request: Request) -> str | None:
        if self.auth is None:
            return None
        tenant = self.auth.tenant_for(request.headers.get("authorization"))
        if tenant is None:
            raise ApiError(
                401,
                "AuthenticationFailed",
                "A valid bearer token is required.",
                reason="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="cpw"'},
            )
        return tenant

    def base_url(self, request: Request) -> str:
        if self.public_url:
            return self.public_url
        host = request.headers.get("host") or "localhost"
        return f"{request.scope.get('scheme', 'http')}://{host}"  # request.url would parse the whole URL

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.api_max_body_bytes
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_large = int(length) > limit
            except ValueError:
                raise invalid("Content-Length is not a number.", "Content-Length") from None
            if too_large:
                raise self.too_large(limit)
            return await request.body()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise self.too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def too_large(limit: int) -> ApiError:
        return ApiError(
            413, "RequestEntityTooLarge", f"The request body is larger than {limit} bytes.", reason="too_large"
        )

    async def read_json(self, request: Request, model: type[BaseModel], required: bool) -> tuple[dict, bytes]:
        raw = await self.read_body(request)
        if not raw.strip():
            if required:
                raise invalid("The request body is required: a JSON object.", "body", "InvalidRequestContent")
            return {}, raw
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise invalid(f"The request body is not valid JSON: {exc.msg}.", "body", "InvalidRequestContent") from None
        if not isinstance(data, dict):
            raise invalid("The request body must be a JSON object.", "body", "InvalidRequestContent")
        try:
            model.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        return data, raw

    def priority(self, request: Request, operation: Operation) -> int:
        value = request.headers.get("x-ms-priority")
        target = "x-ms-priority"
        if value is None:
            value, target = request.query_params.get("priority"), "priority"
        if value is None:
            return DEFAULT_PRIORITY[operation]
        if not value.isdigit() or not 0 <= int(value) <= 9:
            raise invalid(f"'{target}' must be an integer from 0 to 9.", target)
        return int(value)

    def wait_for(self, request: Request) -> float:
        value = request.query_params.get("wait")
        target = "wait"
        if value is None:
            prefer = request.headers.get("prefer")
            if not prefer:
                return 0.0
            match = _PREFER_WAIT.search(prefer)
            if match is None:
                return 0.0
            value, target = match.group(1), "Prefer"
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= 3600 or seconds != seconds:
            raise invalid(f"'{target}' must be a number of seconds from 0 to {self.settings.api_max_wait:g}.", target)
        return min(seconds, self.settings.api_max_wait)

    def lookup(self, job_id: str, tenant: str | None) -> JobResult:
        record = self.store.get(job_id, tenant)
        if record is None:
            code = self.store.miss_code(job_id)
            if code == "OperationExpired":
                raise not_found(f"The operation '{job_id}' has expired from the status retention.", code)
            raise not_found(f"The operation '{job_id}' was not found.", code)
        return record

    # -- submission
    async def submit(
        self,
        request: Request,
        tenant: str | None,
        operation: Operation,
        namespace: str,
        rtype: str,
        resource_request: dict[str, Any],
        raw_body: bytes,
        answer: Callable[[str, float], Awaitable[Response]],
        priority: int | None = None,
    ) -> Response:
        """Publish a job (confirmed), then answer; Idempotency-Key replays the first success."""
        key = request.headers.get("idempotency-key")
        entry: _Remembered | None = None
        cache_key: tuple[str | None, str] | None = None
        shared = fingerprint = ""
        if key is not None:
            if not _IDEMPOTENCY_KEY.fullmatch(key):
                raise invalid("'Idempotency-Key' must be 1 to 255 printable ASCII characters.", "Idempotency-Key")
            fingerprint = hashlib.sha256(
                request.method.encode() + b" " + request.url.path.encode() + b"\n" + raw_body
            ).hexdigest()[:32]
            cache_key = (tenant, key)
            shared = shared_key(tenant, key)
            while True:
                entry = self.idempotency.get(cache_key)
                if entry is None:
                    # Not submitted here: maybe on another replica, or before this process restarted.
                    seen = self.store.idempotent(shared)
                    if seen is not None and time.time() - seen[2] < self.idempotency.window:
                        if seen[1] != fingerprint:
                            raise key_reused()
                        response = await answer(seen[0], self.wait_for(request))
                        response.headers["Idempotent-Replayed"] = "true"
                        return response
                    entry = self.idempotency.begin(cache_key, fingerprint)
                    break
                if entry.fingerprint != fingerprint:
                    raise key_reused()
                if entry.response is None:
                    await entry.done.wait()  # the first request with this key is still in progress
                    continue
                status, body, headers = entry.response
                return Response(
                    body, status_code=status, headers={**headers, "Idempotent-Replayed": "true"}, media_type=JSON
                )
        try:
            prio = self.priority(request, operation) if priority is None else priority
            wait = self.wait_for(request)
            cap = self.settings.api_tenant_max_queued
            if self.store.active_count(tenant) >= cap:
                raise ApiError(
                    429,
                    "TooManyRequests",
                    f"This tenant has {cap} jobs queued or running; retry later.",
                    reason="rate_limited",
                    headers={"Retry-After": self.retry_after},
                )
            now = time.time()
            job_id = new_job_id(now)
            if tracing.enabled:  # the HTTP request's span names the job it submitted
                tracing.set_attributes({"cpw.job.id": job_id})
            job = {
                "id": job_id,
                "provider_namespace": namespace,
                "resource_type": rtype,
                "operation": operation.value,
                "request": resource_request,
                "priority": prio,
                "submitted_at": now,
                "tenant": tenant,
            }
            # One validation in pydantic-core (~8 us) instead of two model_construct calls (~45 us:
            # model_construct asks inspect.signature about ResourceRequest.body's default factory on
            # every call). The routes validated their input already; this also checks the job as
            # the workers will read it.
            try:
                accepted = Job.model_validate(job)
            except ValidationError as exc:
                raise validation_error(exc) from None
            try:
                await self.queue.submit_encoded(
                    orjson.dumps(job), accepted, idempotency=(shared, fingerprint) if key is not None else None
                )
            except (BrokerUnavailable, UnroutableJob):
                raise ApiError(
                    503,
                    "ServiceUnavailable",
                    "The job broker is unavailable; nothing was accepted. Retry later.",
                    reason="broker_unavailable",
                    headers={"Retry-After": self.retry_after},
                ) from None
            self.store.accept(accepted)  # a no-op for the stream-fed index; a write for another store
            metrics.count_submission(operation.value, prio)
            response = await answer(job_id, wait)
            if entry is not None and response.status_code < 300:
                headers = {
                    k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
                }
                entry.response = (response.status_code, bytes(response.body), headers)
                entry.done.set()
            return response
        finally:
            if entry is not None and entry.response is None and cache_key is not None:
                self.idempotency.forget(cache_key, entry)

    def poll_headers(self, request: Request, job_id: str, api_version: str | None) -> dict[str, str]:
        base = self.base_url(request)
        query = f"?api-version={api_version}" if api_version else ""
        return {
            "Location": f"{base}/operationResults/{job_id}{query}",
            "Azure-AsyncOperation": f"{base}/operations/{job_id}{query}",
            "Retry-After": self.retry_after,
        }

    def final_response(self, record: JobResult, operation: Operation | None) -> Response:
        """A finished operation answered like the synchronous call."""
        if record.status is JobStatus.SUCCEEDED:
            if operation is Operation.DELETE:
                return Response(status_code=204)
            result = record.result
            if operation is Operation.LIST and not (isinstance(result, dict) and "value" in result):
                result = {"value": result if isinstance(result, list) else ([] if result is None else [result])}
            if not isinstance(result, dict):
                result = {"value": result}
            return json_response(result, 200)
        error = error_of(record) or {"code": "OperationFailed", "message": "the operation failed", "details": []}
        status = ERROR_STATUS.get(error["code"], 500)
        return json_response({"error": error}, status)


def validation_error(exc: ValidationError) -> ApiError:
    details = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False)[:20]:
        target = ".".join(str(part) for part in err["loc"]) or "body"
        details.append({"code": "InvalidField", "target": target, "message": f"'{target}': {err['msg']}"})
    first = details[0]
    return ApiError(400, "InvalidRequestContent", f"The field {first['message']}", details=details, reason="invalid")


def segment(request: Request, name: str) -> str:
    value = request.path_params[name]
    if not _SEGMENT.fullmatch(value):
        raise invalid(f"'{name}' must be 1 to 90 letters, digits or ._()- starting with a letter or digit.", name)
    return value


def api_version(request: Request) -> str:
    value = request.query_params.get("api-version")
    if value is None:
        raise invalid(
            "The 'api-version' query parameter is required (YYYY-MM-DD).", "api-version", "MissingApiVersionParameter"
        )
    if not _API_VERSION.fullmatch(value):
        raise invalid(
            f"'api-version' must be YYYY-MM-DD, not {value[:40]!r}.", "api-version", "InvalidApiVersionParameter"
        )
    return value


def operation_status(record: JobResult) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "operation": record.operation.value if record.operation else None,
        "namespace": record.provider_namespace,
        "type": record.resource_type,
        "resourceName": record.resource_name,
        "attempts": record.attempts,
        "workerId": record.worker_id,
    }
    if record.status is JobStatus.SUCCEEDED:
        properties["output"] = record.result
    return {
        "id": f"/operations/{record.job_id}",
        "name": record.job_id,
        "status": record.status.value,
        "startTime": iso(record.submitted_at),
        "endTime": iso(record.finished_at),
        "percentComplete": _PERCENT.get(record.status, 100.0),
        "properties": properties,
        "error": error_of(record) if record.status in (JobStatus.FAILED, JobStatus.CANCELED) else None,
    }


def job_view(record: JobResult) -> dict[str, Any]:
    return {
        "id": record.job_id,
        "status": record.status.value,
        "namespace": record.provider_namespace,
        "type": record.resource_type,
        "operation": record.operation.value if record.operation else None,
        "resourceName": record.resource_name,
        "tenant": record.tenant,
        "priority": record.priority,
        "attempts": record.attempts,
        "workerId": record.worker_id,
        "submittedAt": iso(record.submitted_at),
        "startedAt": iso(record.started_at),
        "finishedAt": iso(record.finished_at),
        "result": record.result if record.status is JobStatus.SUCCEEDED else None,
        "error": error_of(record) if record.status in (JobStatus.FAILED, JobStatus.CANCELED) else None,
    }


Handler = Callable[[Request, "str | None"], Awaitable[Response]]


def build_app(ctx: ApiContext, *, extra_routes: list[Route] | None = None, openapi: dict | None = None) -> Starlette:
    """The public app. `extra_routes` (cpw dev: the ops routes) are served unauthenticated."""

    def endpoint(template: str, handler: Handler, public: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def call(request: Request) -> Response:
            started = time.perf_counter()
            try:
                tenant = None if public else ctx.authenticate(request)
                if not public and not ctx.store.ready:
                    raise ApiError(
                        503,
                        "ServiceUnavailable",
                        "The API is starting: its status index is being rebuilt.",
                        reason="broker_unavailable",
                        headers={"Retry-After": ctx.retry_after},
                    )
                response = await handler(request, tenant)
            except ApiError as exc:
                if exc.reason:
                    metrics.count_rejection(exc.reason)
                response = exc.response()
            except Exception:
                log.exception("unhandled error answering %s %s", request.method, template)
                response = internal_error()
            metrics.observe_request(template, request.method, response.status_code, time.perf_counter() - started)
            return response

        return call

    # -- resource routes
    async def put_resource(request: Request, tenant: str | None) -> Response:
        version = api_version(request)
        sub, rg = segment(request, "subscription"), segment(request, "resourceGroup")
        ns, rtype, name = segment(request, "namespace"), segment(request, "type"), segment(request, "name")
        body, raw = await ctx.read_json(request, ResourceBody, required=True)
        resource_request = {
            "subscription_id": sub,
            "resource_group": rg,
            "provider_namespace": ns,
            "resource_type": rtype,
            "resource_name": name,
            "location": body.get("location"),
            "body": body,
            "action": None,
            "api_version": version,
        }
        resource_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{rtype}/{name}"

        async def answer(job_id: str, wait: float) -> Response:
            if wait:
                record = await ctx.store.wait(job_id, wait)
                if record is not None:
                    return ctx.final_response(record, Operation.CREATE)
            accepted = {
                "id": resource_id,
                "name": name,
                "type": f"{ns}/{rtype}",
                "location": body.get("location"),
                "properties": {**(body.get("properties") or {}), "provisioningState": "Accepted"},
                "jobId": job_id,
            }
            if body.get("tags") is not None:
                accepted["tags"] = body["tags"]
            return json_response(accepted, 201, ctx.poll_headers(request, job_id, version))

        return await ctx.submit(request, tenant, Operation.CREATE, ns, rtype, resource_request, raw, answer)

    def offloaded(operation: Operation, has_name: bool, has_action: bool = False) -> Handler:
        async def handler(request: Request, tenant: str | None) -> Response:
            version = api_version(request)
            sub, rg = segment(request, "subscription"), segment(request, "resourceGroup")
            ns, rtype = segment(request, "namespace"), segment(request, "type")
            name = segment(request, "name") if has_name else ""
            action = segment(request, "action") if has_action else None
            body: dict[str, Any] = {}
            raw = b""
            if has_action:
                body, raw = await ctx.read_json(request, ActionBody, required=False)
            resource_request = {
                "subscription_id": sub,
                "resource_group": rg,
                "provider_namespace": ns,
                "resource_type": rtype,
                "resource_name": name,
                "location": None,
                "body": body,
                "action": action,
                "api_version": version,
            }

            async def answer(job_id: str, wait: float) -> Response:
                if wait:
                    record = await ctx.store.wait(job_id, wait)
                    if record is not None:
                        return ctx.final_response(record, operation)
                return json_response(
                    {"jobId": job_id, "status": "Accepted", "operation": operation.value},
                    202,
                    ctx.poll_headers(request, job_id, version),
                )

            return await ctx.submit(request, tenant, operation, ns, rtype, resource_request, raw, answer)

        return handler

    # -- operations
    async def get_operation(request: Request, tenant: str | None) -> Response:
        record = ctx.lookup(request.path_params["id"], tenant)
        return json_response(operation_status(record))

    async def get_operation_result(request: Request, tenant: str | None) -> Response:
        job_id = request.path_params["id"]
        record = ctx.lookup(job_id, tenant)
        if not record.terminal:
            wait = ctx.wait_for(request)
            if wait:
                record = await ctx.store.wait(job_id, wait) or record
        if record.terminal:
            return ctx.final_response(record, record.operation)
        return json_response(
            {"jobId": job_id, "status": record.status.value, "operation": (record.operation or Operation.ACTION).value},
            202,
            ctx.poll_headers(request, job_id, request.query_params.get("api-version")),
        )

    # -- jobs
    async def post_job(request: Request, tenant: str | None) -> Response:
        data, raw = await ctx.read_json(request, JobSubmission, required=True)
        operation = Operation(data["operation"])
        ns, rtype = data["namespace"], data["type"]
        req = {
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
        priority = data.get("priority")

        async def answer(job_id: str, wait: float) -> Response:
            record = await ctx.store.wait(job_id, wait) if wait else None
            record = record or ctx.store.get(job_id, tenant)
            assert record is not None
            headers = {
                "Location": f"{ctx.base_url(request)}/jobs/{job_id}",
                "Azure-AsyncOperation": f"{ctx.base_url(request)}/operations/{job_id}",
                "Retry-After": ctx.retry_after,
            }
            return json_response(job_view(record), 200 if record.terminal else 202, headers)

        return await ctx.submit(request, tenant, operation, ns, rtype, req, raw, answer, priority)

    async def get_job(request: Request, tenant: str | None) -> Response:
        return json_response(job_view(ctx.lookup(request.path_params["id"], tenant)))

    async def cancel_job(request: Request, tenant: str | None) -> Response:
        job_id = request.path_params["id"]
        record = ctx.lookup(job_id, tenant)
        if record.terminal:
            raise ApiError(
                409,
                "Conflict",
                f"The job '{job_id}' has already finished as {record.status.value}.",
                reason="conflict",
            )
        wait = ctx.wait_for(request)
        try:
            await ctx.queue.cancel_job(job_id, reason="canceled through the API")
        except BrokerUnavailable:
            raise ApiError(
                503,
                "ServiceUnavailable",
                "The job broker is unavailable; the cancel was not sent. Retry later.",
                reason="broker_unavailable",
                headers={"Retry-After": ctx.retry_after},
            ) from None
        if wait:
            record = await ctx.store.wait(job_id, wait) or record
        return json_response(job_view(record), 200 if record.terminal else 202, {"Retry-After": ctx.retry_after})

    async def list_jobs(request: Request, tenant: str | None) -> Response:
        params = request.query_params
        status = None
        if params.get("status") is not None:
            try:
                status = JobStatus(params["status"])
            except ValueError:
                raise invalid(
                    "'status' must be one of Accepted, Running, Succeeded, Failed, Canceled.", "status"
                ) from None
        top_raw = params.get("top", "100")
        if not top_raw.isdigit() or not 1 <= int(top_raw) <= _PAGE_MAX:
            raise invalid(f"'top' must be an integer from 1 to {_PAGE_MAX}.", "top")
        top = int(top_raw)
        after = params.get("skipToken")
        records, last = ctx.store.page(tenant, status, top, after)
        next_link = None
        if last is not None:
            query = f"top={top}&skipToken={last}" + (f"&status={status.value}" if status else "")
            next_link = f"{ctx.base_url(request)}/jobs?{query}"
        return json_response({"value": [job_view(r) for r in records], "nextLink": next_link})

    # -- fleet and stats
    async def workers(request: Request, tenant: str | None) -> Response:
        return json_response(ctx.fleet.get_registry_status())

    async def stats(request: Request, tenant: str | None) -> Response:
        try:
            q = await ctx.queue.get_queue_stats()
        except Exception:
            raise ApiError(
                503,
                "ServiceUnavailable",
                "The job broker is unavailable; queue statistics cannot be read.",
                reason="broker_unavailable",
                headers={"Retry-After": ctx.retry_after},
            ) from None
        fleet = ctx.fleet.get_registry_status()
        return json_response(
            {
                "ready": q.ready,
                "unacked": max(q.unacked, int(fleet["in_flight"])),
                "deadLetters": q.dead_letters,
                "retrying": q.retrying,
                "consumers": q.consumers,
                "inFlight": int(fleet["in_flight"]),
                "jobs": ctx.store.counts(tenant),
                "index": ctx.store.info(),
            }
        )

    async def openapi_route(request: Request, tenant: str | None) -> Response:
        return json_response(openapi or {})

    def r(path: str, handler: Handler, methods: list[str], public: bool = False) -> Route:
        return Route(path, endpoint(path, handler, public), methods=methods)

    routes = [
        r(RESOURCE, put_resource, ["PUT"]),
        Route(RESOURCE, endpoint(RESOURCE, offloaded(Operation.DELETE, True), False), methods=["DELETE"]),
        Route(RESOURCE, endpoint(RESOURCE, offloaded(Operation.GET, True), False), methods=["GET"]),
        r(ACTION, offloaded(Operation.ACTION, True, True), ["POST"]),
        r(COLLECTION, offloaded(Operation.LIST, False), ["GET"]),
        r("/operations/{id}", get_operation, ["GET"]),
        r("/operationResults/{id}", get_operation_result, ["GET"]),
        r("/jobs", post_job, ["POST"]),
        r("/jobs", list_jobs, ["GET"]),
        r("/jobs/{id}", get_job, ["GET"]),
        r("/jobs/{id}", cancel_job, ["DELETE"]),
        r("/workers", workers, ["GET"]),
        r("/stats", stats, ["GET"]),
        r("/openapi.json", openapi_route, ["GET"], public=True),
        *(extra_routes or []),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "BadRequest")
        message = {404: "No route matches this path.", 405: "This method is not allowed on this path."}.get(
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
        log.error("unhandled error: %s", type(exc).__name__)
        return internal_error()

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
