"""What every route handler is given: the request's context (who asks, where the API is reachable,
how to find a job) and the declaration of a route.

A handler is a plain module-level coroutine `handler(request, ctx, caller)`: importable and testable
alone. `caller` is who the token says is asking (`auth.Caller`: the tenant and the subscriptions it
holds); handlers look jobs up by `caller.tenant`, and submission.py checks the subscription.
`ApiRoute` names its path template, methods and OpenAPI operation id; app.py serves the table and
openapi.py documents it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from controlplane_workers.fleet import WorkerRegistry
from controlplane_workers.models import JobResult
from controlplane_workers.queue import JobQueue

from . import params
from .auth import ANONYMOUS, Caller, TokenAuth
from .errors import ApiError, no_route, not_found, unavailable
from .idempotency import IdempotencyCache
from .ratelimit import TenantRate
from .settings import ApiSettings
from .store import OperationStore


class ApiContext:
    """What the routes share: settings, the queue, the store, the fleet view and the token map."""

    def __init__(
        self,
        settings: ApiSettings,
        queue: JobQueue,
        store: OperationStore,
        fleet: WorkerRegistry,
        auth: TokenAuth | None,
        openapi: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.store = store
        self.fleet = fleet
        self.auth = auth
        self.openapi = openapi or {}
        self.idempotency = IdempotencyCache(settings.api_idempotency_window)
        self.tenant_rate = TenantRate(settings.api_tenant_rate, settings.api_tenant_burst)
        self.retry_after = str(settings.api_retry_after)
        self.public_url = settings.api_public_url.rstrip("/") if settings.api_public_url else None

    def authenticate(self, request: Request) -> Caller:
        """Who asks; ANONYMOUS (no tenant, any subscription) when the API runs without tokens. 401 for
        a missing or unknown token."""
        if self.auth is None:
            return ANONYMOUS
        caller = self.auth.caller_for(request.headers.get("authorization"))
        if caller is None:
            raise ApiError(
                401,
                "AuthenticationFailed",
                "A valid bearer token is required.",
                reason="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="cpw"'},
            )
        return caller

    def require_operator(self, caller: Caller) -> None:
        """The dead-letter routes: an operator's token, or an API without tokens (dev mode: it is open to
        whoever reaches it, these routes too). A tenant's token is answered as a path that does not
        exist, so it learns nothing of the operator surface or of other tenants' failed jobs."""
        if self.auth is not None and not caller.operator:
            raise no_route()

    def base_url(self, request: Request) -> str:
        if self.public_url:
            return self.public_url
        host = request.headers.get("host") or "localhost"
        return f"{request.scope.get('scheme', 'http')}://{host}"  # request.url would parse the whole URL

    def unavailable(self, message: str) -> ApiError:
        return unavailable(message, self.retry_after)

    async def read_json(self, request: Request, model: type[BaseModel], required: bool) -> tuple[dict, bytes]:
        return await params.read_json(request, model, required, self.settings.api_max_body_bytes)

    def wait_for(self, request: Request) -> float:
        return params.wait_for(request, self.settings.api_max_wait)

    async def lookup(self, job_id: str, tenant: str | None) -> JobResult:
        """The job if `tenant` may see it; 404 OperationNotFound or OperationExpired otherwise."""
        record = await self.store.get(job_id, tenant)
        if record is None:
            code = self.store.miss_code(job_id)
            if code == "OperationExpired":
                raise not_found(f"The operation '{job_id}' has expired from the status retention.", code)
            raise not_found(f"The operation '{job_id}' was not found.", code)
        return record

    def poll_headers(self, request: Request, job_id: str, api_version: str | None) -> dict[str, str]:
        base = self.base_url(request)
        query = f"?api-version={api_version}" if api_version else ""
        return {
            "Location": f"{base}/operationResults/{job_id}{query}",
            "Azure-AsyncOperation": f"{base}/operations/{job_id}{query}",
            "Retry-After": self.retry_after,
        }


def check_subscription(caller: Caller, subscription_id: str) -> None:
    """404 SubscriptionNotFound, as ARM answers, when the caller's token does not hold the subscription:
    the same answer as for one that does not exist, so a tenant learns nothing of others'."""
    if not caller.holds(subscription_id):
        raise not_found(f"The subscription '{subscription_id}' could not be found.", "SubscriptionNotFound")


Handler = Callable[[Request, ApiContext, Caller], Awaitable[Response]]


@dataclass(frozen=True)
class ApiRoute:
    """One route: its path template, method, handler and OpenAPI operation id.

    `public` routes are served without authentication and before the index is ready."""

    path: str
    method: str
    handler: Handler
    operation_id: str
    public: bool = False
