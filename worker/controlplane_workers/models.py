"""The data that crosses the broker: requests, jobs, events and results.

Field names follow the seed and the ITL ControlPlane SDK, so providers written for it see the
request they expect.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .ids import new_job_id


class JobStatus(str, Enum):
    """ARM operation status of a job."""

    ACCEPTED = "Accepted"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class Operation(str, Enum):
    CREATE = "create"
    GET = "get"
    DELETE = "delete"
    LIST = "list"
    ACTION = "action"
    UPDATE = "update"  # PATCH: a provider's update_resource, else get + merge + create_or_update


# The provider method each operation calls (the seed's and the ITL SDK's names).
PROVIDER_METHODS: dict[Operation, str] = {
    Operation.CREATE: "create_or_update_resource",
    Operation.GET: "get_resource",
    Operation.DELETE: "delete_resource",
    Operation.LIST: "list_resources",
    Operation.ACTION: "execute_action",
    Operation.UPDATE: "update_resource",
}


class ResourceRequest(BaseModel):
    """One ARM request as a provider receives it."""

    model_config = ConfigDict(extra="allow")

    subscription_id: str = ""
    resource_group: str = ""
    provider_namespace: str = ""
    resource_type: str = ""
    resource_name: str = ""
    location: str | None = None
    body: dict[str, Any] = Field(default_factory=dict)
    action: str | None = None
    api_version: str | None = None
    # The tenant whose token submitted the job, set by the worker from the job (whatever the request
    # said): a provider that keeps state keys it by tenant, so tenants never see each other's resources.
    tenant: str | None = None


class Job(BaseModel):
    """The message on `provider.jobs`. Its copy on the results stream is the Accepted event."""

    id: str = Field(default_factory=new_job_id)  # time-ordered: see ids.py
    provider_namespace: str
    resource_type: str
    operation: Operation
    request: ResourceRequest
    priority: int = Field(default=5, ge=0, le=9)
    submitted_at: float = Field(default_factory=time.time)
    tenant: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    max_attempts: int | None = Field(default=None, ge=1)
    # A delayed job: the epoch second before which no worker starts it (None: at once).
    not_before: float | None = None

    @property
    def routing_key(self) -> str:
        return f"{self.provider_namespace}.{self.resource_type}.{self.operation.value}"


class JobError(BaseModel):
    """ARM error shape."""

    code: str
    message: str


class EventType(str, Enum):
    ACCEPTED = "accepted"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    DEAD_LETTERED = "dead-lettered"


EVENT_STATUS: dict[EventType, JobStatus] = {
    EventType.ACCEPTED: JobStatus.ACCEPTED,
    EventType.RUNNING: JobStatus.RUNNING,
    EventType.RETRYING: JobStatus.RUNNING,
    EventType.SUCCEEDED: JobStatus.SUCCEEDED,
    EventType.FAILED: JobStatus.FAILED,
    EventType.CANCELED: JobStatus.CANCELED,
    EventType.DEAD_LETTERED: JobStatus.FAILED,
}


class JobEvent(BaseModel):
    """What a worker publishes on the results stream about a job."""

    job_id: str
    type: EventType
    at: float = Field(default_factory=time.time)
    attempt: int = 1
    worker_id: str | None = None
    result: Any = None
    error: JobError | None = None
    retry_in: float | None = None
    # On a worker's events: the job's tenant. A reader that missed the Accepted record (the broker
    # went away between the job's confirm and the record) still knows whose job it is.
    tenant: str | None = None
    job: Job | None = None  # on `accepted`: the job as submitted
    redrive: bool = False  # on `accepted`: an operator sent a dead-lettered job round again

    @property
    def status(self) -> JobStatus:
        return EVENT_STATUS[self.type]


class JobResult(BaseModel):
    """A job's state as any reader of the results stream sees it."""

    job_id: str
    status: JobStatus
    provider_namespace: str | None = None
    resource_type: str | None = None
    operation: Operation | None = None
    resource_name: str | None = None
    tenant: str | None = None
    priority: int | None = None
    result: Any = None
    error: JobError | None = None
    attempts: int = 0
    worker_id: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float | None = None  # a delayed job: when it starts at the earliest

    @property
    def terminal(self) -> bool:
        return self.status.terminal
