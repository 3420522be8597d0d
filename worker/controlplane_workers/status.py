"""The job states as read from the results stream: an index any process can rebuild.

Delivery is at least once, so a job may end twice (a worker died after publishing its result but
before its ack). The first terminal event wins; later ones are ignored and counted.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import orjson
from pydantic import ValidationError

from .broker.base import KIND, REDRIVE, StreamMessage
from .events import BATCH
from .models import Job, JobEvent, JobResult, JobStatus

_STARTED = (JobStatus.RUNNING,)
# Stream messages with this kind are position markers a reader publishes for itself (the API
# adapter publishes one at start and is ready once it has read it back); the index skips them.
MARKER = "marker"


class StatusIndex:
    """job id -> JobResult, bounded: the oldest jobs are evicted first."""

    def __init__(self, max_jobs: int = 1_000_000) -> None:
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
        # Additive, for the API adapter: jobs not yet terminal per tenant (the per-tenant queue cap)
        # and the submission time of the newest evicted job (an older unknown id was evicted).
        self.active: dict[str | None, int] = {}
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

    def active_count(self, tenant: str | None) -> int:
        """Jobs of `tenant` that are Accepted or Running."""
        return self.active.get(tenant, 0)

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

    def accept(self, job: Job) -> None:
        """Record a job its submitter just published (its stream copy, arriving later, changes nothing)."""
        self._accepted(job)

    def _count(self, record: JobResult, delta: int) -> None:
        if not record.terminal:
            self.active[record.tenant] = self.active.get(record.tenant, 0) + delta

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
                for item in orjson.loads(message.body):
                    self._apply_event(item)
            elif kind == "job":  # a job copied onto the stream by an exchange binding
                self._accepted(Job.model_validate_json(message.body), redrive=bool(message.headers.get(REDRIVE)))
            else:
                self._apply_event(orjson.loads(message.body))
        except (ValidationError, orjson.JSONDecodeError, TypeError):
            self.malformed += 1

    def _apply_event(self, data: object) -> None:
        event = JobEvent.model_validate(data)
        if event.job is not None:
            self._accepted(event.job, redrive=event.redrive)
        else:
            self._event(event)

    def _accepted(self, job: Job, redrive: bool = False) -> None:
        current = self.jobs.get(job.id)
        if current is not None and redrive:  # an operator sent a dead-lettered job round again
            self.redriven += 1
            self._count(current, -1)
            del self.jobs[job.id]
            current = None
        if current is not None:
            current.provider_namespace = job.provider_namespace
            current.submitted_at = job.submitted_at
            if current.tenant is None and job.tenant is not None:  # an event came before the job
                self._count(current, -1)
                current.tenant = job.tenant
                self._count(current, 1)
            current.resource_type = current.resource_type or job.resource_type
            current.operation = current.operation or job.operation
            current.resource_name = current.resource_name or job.request.resource_name
            current.priority = job.priority if current.priority is None else current.priority
            return
        self._insert(
            JobResult(
                job_id=job.id,
                status=JobStatus.ACCEPTED,
                provider_namespace=job.provider_namespace,
                resource_type=job.resource_type,
                operation=job.operation,
                resource_name=job.request.resource_name,
                tenant=job.tenant,
                priority=job.priority,
                submitted_at=job.submitted_at,
            )
        )

    def _event(self, event: JobEvent) -> None:
        self.last_event_at = event.at
        record = self.jobs.get(event.job_id)
        if record is None:
            record = JobResult(job_id=event.job_id, status=JobStatus.ACCEPTED)
            self._insert(record)
        if record.terminal:
            if event.status.terminal:
                self.duplicates += 1
            return
        status = event.status
        record.attempts = max(record.attempts, event.attempt)
        record.worker_id = event.worker_id or record.worker_id
        if status in _STARTED and record.started_at is None:
            record.started_at = event.at
        if status.terminal:
            self._count(record, -1)
        record.status = status
        if status.terminal:
            record.finished_at = event.at
            record.started_at = record.started_at or event.at
            record.result = event.result
            record.error = event.error
            for waiter in self.waiters.pop(event.job_id, ()):
                if not waiter.done():
                    waiter.set_result(record)
        elif event.error is not None:
            record.error = event.error

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
        except asyncio.TimeoutError:
            return None
        finally:
            waiters = self.waiters.get(job_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self.waiters[job_id]
