"""The job states as read from the results stream: an index any process can rebuild.

Delivery is at least once, so a job may end twice (a worker died after publishing its result but
before its ack). The first terminal event wins; later ones are ignored and counted.

Every API replica holds the whole retention of the stream, so an entry is kept compact (`Entry`:
slots, interned strings, the result as its encoded JSON) and the index is bounded in bytes as well as
in jobs: over either bound the oldest *finished* jobs are evicted, never one still Accepted or
Running. `nbytes` is an estimate of what the entries cost the process (checked against tracemalloc in
tests/unit/test_status_index.py); readers get a `JobResult` built from the entry on each read.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
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
# What one entry costs besides its variable parts (measured with tracemalloc on CPython 3.11: the slots
# object, its float objects, its slot in the jobs dict and its key, the eviction deque's slot).
ENTRY_BYTES = 540
_intern = sys.intern


class Entry:
    """One job, compact. Strings that repeat across jobs (namespace, type, tenant, worker) are interned."""

    __slots__ = (
        "status",
        "namespace",
        "resource_type",
        "operation",
        "name",
        "tenant",
        "priority",
        "attempts",
        "worker",
        "submitted",
        "started",
        "finished",
        "result",
        "error",
        "nbytes",
    )

    def __init__(self, status: JobStatus) -> None:
        self.status = status
        self.namespace: str | None = None
        self.resource_type: str | None = None
        self.operation: Operation | None = None
        self.name: str | None = None
        self.tenant: str | None = None
        self.priority: int | None = None
        self.attempts = 0
        self.worker: str | None = None
        self.submitted: float | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self.result: bytes | None = None  # the provider's result as encoded JSON
        self.error: JobError | None = None
        self.nbytes = ENTRY_BYTES

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def view(self, job_id: str) -> JobResult:
        return JobResult.model_construct(
            job_id=job_id,
            status=self.status,
            provider_namespace=self.namespace,
            resource_type=self.resource_type,
            operation=self.operation,
            resource_name=self.name,
            tenant=self.tenant,
            priority=self.priority,
            result=None if self.result is None else orjson.loads(self.result),
            error=self.error,
            attempts=self.attempts,
            worker_id=self.worker,
            submitted_at=self.submitted,
            started_at=self.started,
            finished_at=self.finished,
        )


def _name(value: str | None) -> str | None:
    return None if value is None else _intern(value)


class StatusIndex:
    """job id -> Entry, bounded by `max_jobs` and `max_bytes`: the oldest finished jobs are evicted first."""

    def __init__(
        self, max_jobs: int = DEFAULT_MAX_JOBS, max_bytes: int | None = None, max_age: float | None = None
    ) -> None:
        """`max_age`: finished jobs submitted longer ago are dropped (the stream's retention): they
        answer OperationExpired anyway, and an eviction then always means a bound was too small."""
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.expired = 0
        self.jobs: dict[str, Entry] = {}  # in arrival order; eviction goes by `finished`
        self.finished: deque[str] = deque()  # ids in the order they finished: the eviction order
        self.waiters: dict[str, list[asyncio.Future[JobResult]]] = {}
        self.nbytes = 0
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

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.jobs

    def get(self, job_id: str) -> JobResult | None:
        entry = self.jobs.get(job_id)
        return None if entry is None else entry.view(job_id)

    def get_for(self, job_id: str, tenant: str | None) -> JobResult | None:
        """The job if `tenant` may see it: None (no tenants) sees every job, a tenant its own only."""
        entry = self.jobs.get(job_id)
        if entry is None or (tenant is not None and entry.tenant != tenant):
            return None
        return entry.view(job_id)

    def iter_jobs(
        self, tenant: str | None = None, status: JobStatus | None = None, newest_first: bool = True
    ) -> Iterator[JobResult]:
        """Jobs `tenant` may see, optionally in one status; newest (by arrival) first."""
        items = reversed(self.jobs.items()) if newest_first else iter(self.jobs.items())
        for job_id, entry in items:
            if tenant is not None and entry.tenant != tenant:
                continue
            if status is not None and entry.status is not status:
                continue
            yield entry.view(job_id)

    def counts(self, tenant: str | None = None) -> dict[str, int]:
        """Jobs `tenant` may see, by status."""
        counts = {s.value: 0 for s in JobStatus}
        for entry in self.jobs.values():
            if tenant is None or entry.tenant == tenant:
                counts[entry.status.value] += 1
        return counts

    def _count(self, entry: Entry, delta: int) -> None:
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
        self._evict()  # once per stream message: a bound is exceeded by one batch at most, briefly

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

    def _evicted_one(self) -> None:
        """Hook: a finished job was evicted to stay within a bound (the API counts it in a metric)."""

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
        self._evict()

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
            self._remove(job_id, current)
            current = None
        if current is None:
            current = Entry(JobStatus.ACCEPTED)
            current.tenant = _name(tenant)
            self._insert(job_id, current)
        else:
            self._adopt_tenant(current, tenant)  # an event came before the job
        current.namespace = _intern(namespace)
        current.submitted = submitted_at
        current.resource_type = current.resource_type or _intern(resource_type)
        current.operation = current.operation or operation
        if current.name is None and resource_name is not None:
            current.name = resource_name
            self._grow(current, len(resource_name))
        current.priority = priority if current.priority is None else current.priority

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
        entry = self.jobs.get(job_id)
        if entry is None:
            entry = Entry(JobStatus.ACCEPTED)
            self._insert(job_id, entry)
        self._adopt_tenant(entry, tenant)  # its Accepted record may never come (models.JobEvent)
        if entry.terminal:
            if status.terminal:
                self.duplicates += 1
            return
        entry.attempts = max(entry.attempts, attempt)
        if worker_id is not None:
            entry.worker = _intern(worker_id)
        if status in _STARTED and entry.started is None:
            entry.started = at
        if status.terminal:
            self._count(entry, -1)
        entry.status = status
        if error is not None:
            entry.error = error
            self._grow(entry, len(error.message) + len(error.code))
        if not status.terminal:
            return
        entry.finished = at
        entry.started = entry.started or at
        if result is not None:
            entry.result = memoryview(orjson.dumps(result)).tobytes()  # orjson leaves a 4 KiB buffer behind
            self._grow(entry, len(entry.result))
        self.finished.append(job_id)
        waiters = self.waiters.pop(job_id, None)
        if waiters:
            record = entry.view(job_id)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(record)

    def _adopt_tenant(self, entry: Entry, tenant: str | None) -> None:
        """Give a job learned of without its tenant the tenant a later record names."""
        if entry.tenant is None and tenant is not None:
            self._count(entry, -1)
            entry.tenant = _intern(tenant)
            self._count(entry, 1)

    def _grow(self, entry: Entry, nbytes: int) -> None:
        entry.nbytes += nbytes
        self.nbytes += nbytes

    def _insert(self, job_id: str, entry: Entry) -> None:
        self.jobs[job_id] = entry
        self.nbytes += entry.nbytes
        self._count(entry, 1)

    def _remove(self, job_id: str, entry: Entry) -> None:
        del self.jobs[job_id]
        self.nbytes -= entry.nbytes
        self._count(entry, -1)

    def over_bound(self) -> bool:
        return len(self.jobs) > self.max_jobs or (self.max_bytes is not None and self.nbytes > self.max_bytes)

    def _evict(self) -> None:
        """The oldest finished jobs go while a bound is exceeded; a job in flight is never evicted."""
        finished = self.finished
        if self.max_age is not None and finished:
            self._expire(time.time() - self.max_age)
        while finished and self.over_bound():
            job_id = finished.popleft()
            entry = self.jobs.get(job_id)
            if entry is None or not entry.terminal:  # redriven or removed since it finished
                continue
            self._remove(job_id, entry)
            self.evicted += 1
            self._evicted_one()
            if entry.submitted is not None:
                self.evicted_before = max(self.evicted_before or 0.0, entry.submitted)

    def _expire(self, cutoff: float) -> None:
        finished, jobs = self.finished, self.jobs
        while finished:
            entry = jobs.get(finished[0])
            if entry is not None and entry.terminal and (entry.submitted or cutoff) >= cutoff:
                return
            job_id = finished.popleft()
            if entry is not None and entry.terminal:
                self._remove(job_id, entry)
                self.expired += 1
                self.evicted_before = max(self.evicted_before or 0.0, entry.submitted or 0.0)

    async def wait(self, job_id: str, timeout: float | None) -> JobResult | None:
        """The job's terminal state, or None when it is not terminal within `timeout` seconds."""
        entry = self.jobs.get(job_id)
        if entry is not None and entry.terminal:
            return entry.view(job_id)
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
