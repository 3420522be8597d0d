"""Pydantic models: they validate input and describe every answer in /openapi.json.

Answers are built as plain dicts on the request path (cheap); the response models here are the
contract those dicts follow, and the schemathesis suite checks them against it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controlplane_workers.models import JobStatus, Operation

# ARM-ish names: what a path segment may hold.
SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9._()-]{0,89}$"
API_VERSION = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$"
IDEMPOTENCY_KEY = r"^[!-~]{1,255}$"
JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"


# -- input
class ResourceBody(BaseModel):
    """The body of a PUT: an ARM resource. Unknown top-level fields are passed to the provider."""

    model_config = ConfigDict(extra="allow")

    location: str | None = Field(None, max_length=200)
    properties: dict[str, Any] | None = None
    tags: dict[str, str] | None = None


class PatchBody(BaseModel):
    """The body of a PATCH: a JSON merge patch (RFC 7396) of the resource; null removes a field."""

    model_config = ConfigDict(extra="allow")

    location: str | None = Field(None, max_length=200)
    properties: dict[str, Any] | None = None
    tags: dict[str, str | None] | None = None


class ActionBody(BaseModel):
    """The body of a POST action: any JSON object, passed to the provider."""

    model_config = ConfigDict(extra="allow")


class JobRequest(BaseModel):
    """The provider request of a job submitted through POST /jobs."""

    model_config = ConfigDict(extra="forbid")

    subscription_id: str = Field("", max_length=200)
    resource_group: str = Field("", max_length=200)
    resource_name: str = Field("", max_length=200)
    location: str | None = Field(None, max_length=200)
    body: dict[str, Any] = Field(default_factory=dict)
    action: str | None = Field(None, max_length=200)
    api_version: str | None = Field(None, max_length=40)


class JobSubmission(BaseModel):
    """POST /jobs: a job for any provider the workers serve."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(..., pattern=SEGMENT, description="Provider namespace, e.g. Demo.Compute.")
    type: str = Field(..., pattern=SEGMENT, description="Resource type, e.g. virtualMachines.")
    operation: Operation
    request: JobRequest = Field(default_factory=JobRequest)
    priority: int | None = Field(None, ge=0, le=9, description="0-9, 9 most urgent; default per operation.")
    delay: float | None = Field(
        None,
        strict=True,
        json_schema_extra={"minimum": 0},
        description="Seconds before the job may start (a delayed job), at most CPW_JOB_MAX_DELAY; also "
        "the x-cpw-delay header or ?delay=.",
    )


# -- output
class ErrorDetail(BaseModel):
    code: str
    message: str
    target: str | None = None


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ArmError(BaseModel):
    """The ARM error shape of every non-success answer."""

    error: ErrorInfo


class OperationError(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class OperationStatusResource(BaseModel):
    """GET /operations/{id}: the ARM operation status resource."""

    id: str
    name: str
    status: JobStatus
    startTime: str | None = Field(None, description="ISO 8601, when the job was accepted.")
    endTime: str | None = Field(None, description="ISO 8601, when the job reached its terminal state.")
    percentComplete: float = Field(..., ge=0, le=100)
    properties: dict[str, Any]
    error: OperationError | None = None


class AcceptedResource(BaseModel):
    """201 to a PUT: the resource as accepted, provisioningState Accepted."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    type: str
    location: str | None = None
    properties: dict[str, Any]
    jobId: str


class ResourcePage(BaseModel):
    """200 to a collection GET: one page of the provider's resources."""

    value: list[Any]
    nextLink: str | None = Field(None, description="Absolute URL of the next page (keeps api-version); null: last.")


class AcceptedOperation(BaseModel):
    """202 to an offloaded PATCH, DELETE or POST action, or a GET asked with `Prefer: respond-async`."""

    jobId: str
    status: Literal["Accepted", "Running"]
    operation: Operation


class JobView(BaseModel):
    """A job as GET /jobs/{id} shows it."""

    id: str
    status: JobStatus
    namespace: str | None
    type: str | None
    operation: Operation | None
    resourceName: str | None
    tenant: str | None
    priority: int | None
    attempts: int
    workerId: str | None
    submittedAt: str | None
    startedAt: str | None
    finishedAt: str | None
    notBefore: str | None = Field(None, description="ISO 8601: a delayed job starts no earlier than this.")
    result: Any = None
    error: OperationError | None = None


class JobPage(BaseModel):
    value: list[JobView]
    nextLink: str | None = None


class DeadLetterJob(BaseModel):
    """What the dead-lettered job was (its body is never shown: it may hold a tenant's secrets)."""

    namespace: str | None
    type: str | None
    operation: str | None
    tenant: str | None


class DeadLetter(BaseModel):
    """One dead letter, as GET /deadLetters shows it."""

    id: str | None = Field(description="The job id; null for a message that carried none (not addressable).")
    reason: str
    detail: str
    attempts: int
    deadLetteredAt: str | None
    job: DeadLetterJob


class DeadLetterPage(BaseModel):
    value: list[DeadLetter]
    nextLink: str | None = None


class Stats(BaseModel):
    ready: int
    unacked: int
    deadLetters: int
    retrying: int
    delayed: int = Field(0, description="Delayed jobs not yet due.")
    consumers: int
    inFlight: int
    jobs: dict[str, int]
    index: dict[str, Any]


class Fleet(BaseModel):
    total_workers: int
    ready_workers: int
    in_flight: int
    capacity: int
    jobs_processed: int
    workers: list[dict[str, Any]]
