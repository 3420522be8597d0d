"""OffloadingProviderRegistry: the provider calls of an API server, answered by the worker fleet.

Drop it in where an API server called its providers directly: each call publishes a job and
returns at once with the job id and status Accepted (ARM's asynchronous pattern).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .models import JobResult, JobStatus, Operation, ResourceRequest
from .queue import JobQueue

# The seed's default priorities: reads are the most urgent, listing the least.
DEFAULT_PRIORITY = {
    Operation.GET: 8,
    Operation.CREATE: 7,
    Operation.UPDATE: 7,
    Operation.DELETE: 6,
    Operation.LIST: 5,
    Operation.ACTION: 5,
}


class OffloadResponse(BaseModel):
    job_id: str
    status: JobStatus = JobStatus.ACCEPTED
    operation: Operation
    provider_namespace: str
    resource_type: str
    resource_name: str | None = None
    result: Any = None
    error: Any = None


class OffloadingProviderRegistry:
    """Each provider method publishes a job and returns an Accepted response with its id."""

    def __init__(self, queue: JobQueue, *, priorities: dict[Operation, int] | None = None) -> None:
        self.queue = queue
        self.priorities = {**DEFAULT_PRIORITY, **(priorities or {})}

    async def _offload(
        self,
        operation: Operation,
        provider_namespace: str,
        resource_type: str,
        request: ResourceRequest | dict[str, Any],
        priority: int | None,
    ) -> OffloadResponse:
        if isinstance(request, dict):
            request = ResourceRequest.model_validate(request)
        job_id = await self.queue.submit_job(
            provider_namespace,
            resource_type,
            operation,
            request,
            priority=self.priorities[operation] if priority is None else priority,
        )
        return OffloadResponse(
            job_id=job_id,
            operation=operation,
            provider_namespace=provider_namespace,
            resource_type=resource_type,
            resource_name=request.resource_name or None,
        )

    async def create_or_update_resource(
        self,
        provider_namespace: str,
        resource_type: str,
        request: ResourceRequest | dict[str, Any],
        priority: int | None = None,
    ) -> OffloadResponse:
        return await self._offload(Operation.CREATE, provider_namespace, resource_type, request, priority)

    async def get_resource(
        self,
        provider_namespace: str,
        resource_type: str,
        request: ResourceRequest | dict[str, Any],
        priority: int | None = None,
    ) -> OffloadResponse:
        return await self._offload(Operation.GET, provider_namespace, resource_type, request, priority)

    async def delete_resource(
        self,
        provider_namespace: str,
        resource_type: str,
        request: ResourceRequest | dict[str, Any],
        priority: int | None = None,
    ) -> OffloadResponse:
        return await self._offload(Operation.DELETE, provider_namespace, resource_type, request, priority)

    async def list_resources(
        self,
        provider_namespace: str,
        resource_type: str,
        request: ResourceRequest | dict[str, Any],
        priority: int | None = None,
    ) -> OffloadResponse:
        return await self._offload(Operation.LIST, provider_namespace, resource_type, request, priority)

    async def execute_action(
        self,
        provider_namespace: str,
        resource_type: str,
        request: ResourceRequest | dict[str, Any],
        priority: int | None = None,
    ) -> OffloadResponse:
        return await self._offload(Operation.ACTION, provider_namespace, resource_type, request, priority)

    async def get_job_result(self, job_id: str, timeout: float | None = 30.0) -> JobResult | None:
        return await self.queue.get_job_result(job_id, timeout)


class WaitingOffloadingProviderRegistry(OffloadingProviderRegistry):
    """Offloads, then waits up to `timeout` seconds: the answer carries the result when it came in time."""

    def __init__(self, queue: JobQueue, *, timeout: float = 30.0, priorities: dict[Operation, int] | None = None):
        super().__init__(queue, priorities=priorities)
        self.timeout = timeout

    async def _offload(self, *args: Any) -> OffloadResponse:
        response = await super()._offload(*args)
        result = await self.queue.get_job_result(response.job_id, self.timeout)
        if result is not None:
            response.status, response.result, response.error = result.status, result.result, result.error
        return response
