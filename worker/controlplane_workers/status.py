"""The job states as read from the results stream: an index any process can rebuild.

Delivery is at least once, so a job may end twice (a worker died after publishing its result but
before its ack). The first terminal event wins; later ones are ignored and counted.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

import orjson
from pydantic import ValidationError

from .broker.base import KIND, REDRIVE, StreamMessage
from .models import Job, JobEvent, JobResult, JobStatus

_STARTED = (JobStatus.RUNNING,)


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

    def __len__(self) -> int:
        return len(self.jobs)

    def get(self, job_id: str) -> JobResult | None:
        return self.jobs.get(job_id)

    def apply_batch(self, messages: Sequence[StreamMessage]) -> None:
        for message in messages:
            self.apply(message)

    def apply(self, message: StreamMessage) -> None:
        self.events += 1
        self.last_offset = message.offset
        try:
            if message.headers.get(KIND) == "job":
                self._accepted(Job.model_validate_json(message.body), redrive=bool(message.headers.get(REDRIVE)))
            else:
                self._event(JobEvent.model_validate(orjson.loads(message.body)))
        except (ValidationError, orjson.JSONDecodeError):
            self.malformed += 1

    def _accepted(self, job: Job, redrive: bool = False) -> None:
        current = self.jobs.get(job.id)
        if current is not None and redrive:  # an operator sent a dead-lettered job round again
            self.redriven += 1
            del self.jobs[job.id]
            current = None
        if current is not None:
            current.provider_namespace = job.provider_namespace
            current.submitted_at = job.submitted_at
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
        while len(self.jobs) > self.max_jobs:
            self.jobs.popitem(last=False)
            self.evicted += 1

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
