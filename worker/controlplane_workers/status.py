"""The job states as read from the results stream: an index any process can rebuild.

Delivery is at least once, so a job may end twice (a worker died after publishing its result but
before its ack). The first terminal event wins; later ones are ignored and counted.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from .broker.base import KIND, REDRIVE, StreamMessage
from .events import BATCH
from .models import EVENT_STATUS, EventType, Job, JobError, JobResult, JobStatus, Operation

_STARTED = (JobStatus.RUNNING,)
# Stream messages with this kind are position markers a reader publishes for itself (the API
# adapter publishes one at start and is ready once it has read it back); the index skips them.
MARKER = "marker"
DEFAULT_MAX_JOBS = 1_000_000


class StatusIndex:
    """job id -> JobResult, bounded: the oldest jobs are evicted first."""

    def __init__(self, max_jobs: int = DEFAULT_MAX_JOBS) -> None:
        self.max_jobs = max_jobs
        self.jobs: OrderedDict[str, JobResult] = OrderedDict()
        self.waiters: dict[str, list[asyncio.Future[JobResult]]] = {}
        self.duplicates = 0
        self.evicted = 0
        self.malformed = 0
        self.redriven = 0
        self.events = 0
        self.last_offset = -1
        self.last_event_at: float | None = None
        # The submission time of the newest evicted job: an unknown id made before it was evicted.
        self.evicted_before: float | None = None

    def __len__(self) -> int:
        return len(self.jobs)

    def get(self, job_id: str) -> JobResult | None:
        return self.jobs.get(job_id)

    def get_for(self, job_id: str, tenant: str | None) -> JobResult | None:
        """The job if `tenant` may see it: None (no tenants) sees every job, a tenant its own only."""
        record = self.jobs.get(job_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            return None
        return record

    def iter_jobs(
        self, tenant: str | None = None, status: JobStatus | None = None, newest_first: bool = True
    ) -> Iterator[JobResult]:
        """Jobs `tenant` may see, optionally in one status; newest (by arrival) first."""
        records = reversed(self.jobs.values()) if newest_first else iter(self.jobs.values())
        for record in records:
            if tenant is not None and record.tenant != tenant:
                continue
            if status is not None and record.status is not status:
                continue
            yield record

    def _count(self, record: JobResult, delta: int) -> None:
        """Hook: a job that is not terminal entered (+1) or left (-1) this index, or changed tenant.

        A subclass that counts jobs in flight (the API's per-tenant cap) overrides it."""

    def apply_batch(self, messages: Sequence[StreamMessage]) -> None:
        for message in messages:
            self.apply(message)

    def apply(self, message: StreamMessage) -> None:
        self.events += 1
        self.last_offset = message.offset
        kind = message.headers.get(KIND)
        if kind == MARKER:  # a reader's own position marker, not a job
            return
        try:
            if kind == BATCH:
                items = orjson.loads(message.body)
                self.events += len(items) - 1  # count events, not stream messages
                for item in items:
                    self._apply_event(item)
            elif kind == "job":  # a bare job message (a binding of the stream to the job exchange)
                job = Job.model_validate_json(message.body)
                self._accepted(
                    job.id,
                    job.provider_namespace,
                    job.resource_type,
                    job.operation,
                    job.request.resource_name,
                    job.tenant,
                    job.priority,
                    job.submitted_at,
                    redrive=bool(message.headers.get(REDRIVE)),
                )
            else:
                self._apply_event(orjson.loads(message.body))
        except (ValidationError, orjson.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError):
            self.malformed += 1

    def _apply_event(self, data: dict[str, Any]) -> None:
        """One event as written by this project (events.py): read as plain data, the hot path of replay."""
        job = data.get("job")
        if job is not None:
            key = data.get("idempotency")
            if key is not None:
                self._remember_key(key["key"], job["id"], key["fingerprint"], float(data["at"]))
            self._accepted(
                job["id"],
                job["provider_namespace"],
                job["resource_type"],
                Operation(job["operation"]),
                (job.get("request") or {}).get("resource_name"),
                job.get("tenant"),
                job.get("priority", 5),
                job.get("submitted_at"),
                redrive=bool(data.get("redrive")),
            )
            return
        error = data.get("error")
        self._event(
            data["job_id"],
            EVENT_STATUS[EventType(data["type"])],
            float(data["at"]),
            int(data.get("attempt", 1)),
            data.get("worker_id"),
            data.get("result"),
            JobError.model_construct(**error) if error else None,
            data.get("tenant"),
        )

    def _remember_key(self, key: str, job_id: str, fingerprint: str, at: float) -> None:
        """Hook: an Accepted record carried an idempotency key (events.accepted_record). The API keeps
        them, so every replica can answer a retried submission with the job the first one made."""

    def accept(self, job: Job) -> None:
        """Record a job its submitter just published (its stream record, arriving later, changes nothing)."""
        self._accepted(
            job.id,
            job.provider_namespace,
            job.resource_type,
            job.operation,
            job.request.resource_name,
            job.tenant,
            job.priority,
            job.submitted_at,
        )

    def _accepted(
        self,
        job_id: str,
        namespace: str,
        resource_type: str,
        operation: Operation,
        resource_name: str | None,
        tenant: str | None,
        priority: int,
        submitted_at: float | None,
        *,
        redrive: bool = False,
    ) -> None:
        current = self.jobs.get(job_id)
        if current is not None and redrive:  # an operator sent a dead-lettered job round again
            self.redriven += 1
            self._count(current, -1)
            del self.jobs[job_id]
            current = None
        if current is not None:
            current.provider_namespace = namespace
            current.submitted_at = submitted_at
            self._adopt_tenant(current, tenant)  # an event came before the job
            current.resource_type = current.resource_type or resource_type
            current.operation = current.operation or operation
            current.resource_name = current.resource_name or resource_name
            current.priority = priority if current.priority is None else current.priority
            return
        self._insert(
            JobResult.model_construct(
                job_id=job_id,
                status=JobStatus.ACCEPTED,
                provider_namespace=namespace,
                resource_type=resource_type,
                operation=operation,
                resource_name=resource_name,
                tenant=tenant,
                priority=priority,
                submitted_at=submitted_at,
                result=None,
                error=None,
                attempts=0,
                worker_id=None,
                started_at=None,
                finished_at=None,
            )
        )

    def _event(
        self,
        job_id: str,
        status: JobStatus,
        at: float,
        attempt: int,
        worker_id: str | None,
        result: Any,
        error: JobError | None,
        tenant: str | None = None,
    ) -> None:
        self.last_event_at = at
        record = self.jobs.get(job_id)
        if record is None:
            record = JobResult(job_id=job_id, status=JobStatus.ACCEPTED)
            self._insert(record)
        self._adopt_tenant(record, tenant)  # its Accepted record may never come (models.JobEvent)
        if record.terminal:
            if status.terminal:
                self.duplicates += 1
            return
        record.attempts = max(record.attempts, attempt)
        record.worker_id = worker_id or record.worker_id
        if status in _STARTED and record.started_at is None:
            record.started_at = at
        if status.terminal:
            self._count(record, -1)
        record.status = status
        if status.terminal:
            record.finished_at = at
            record.started_at = record.started_at or at
            record.result = result
            record.error = error
            for waiter in self.waiters.pop(job_id, ()):
                if not waiter.done():
                    waiter.set_result(record)
        elif error is not None:
            record.error = error

    def _adopt_tenant(self, record: JobResult, tenant: str | None) -> None:
        """Give a job learned of without its tenant the tenant a later record names."""
        if record.tenant is None and tenant is not None:
            self._count(record, -1)
            record.tenant = tenant
            self._count(record, 1)

    def _insert(self, record: JobResult) -> None:
        self.jobs[record.job_id] = record
        self._count(record, 1)
        while len(self.jobs) > self.max_jobs:
            _, old = self.jobs.popitem(last=False)
            self._count(old, -1)
            self.evicted += 1
            if old.submitted_at is not None:
                self.evicted_before = max(self.evicted_before or 0.0, old.submitted_at)

    async def wait(self, job_id: str, timeout: float | None) -> JobResult | None:
        """The job's terminal state, or None when it is not terminal within `timeout` seconds."""
        record = self.jobs.get(job_id)
        if record is not None and record.terminal:
            return record
        future: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(job_id, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self.waiters.get(job_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self.waiters[job_id]
