"""JobQueue: the client side. Submit a job, learn its outcome, cancel it.

`submit_job` returns only once the broker confirmed the job: a returned job id is a promise that
the job will reach exactly one visible terminal state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any

import orjson

from . import tracing
from .broker import Broker, QueueStats, Subscription, open_broker
from .broker.base import JOB_ID, Offset, StreamMessage
from .events import EventBatcher, accepted_record
from .models import EventType, Job, JobError, JobEvent, JobResult, JobStatus, Operation, ResourceRequest
from .settings import Settings, load_settings
from .status import DEFAULT_MAX_JOBS, JobPage, StatusIndex
from .topology import Topology

log = logging.getLogger(__name__)


class JobQueue:
    """Submit jobs and read their results. The broker is chosen by URL (amqp://, memory://)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        replay_from: Offset = "first",
        index_max_jobs: int | None = None,
        index: StatusIndex | None = None,
        name: str = "cpw-client",
        follow_results: bool = True,
    ) -> None:
        """`index`: where the results stream is read into (the API hands its own, which also counts
        tenants and keys); by default a StatusIndex of `index_max_jobs` jobs. `follow_results=False`:
        the results stream is not read (an API whose operations live in a database), so `wait` and
        `get` know only what this queue submitted."""
        self.settings = settings or load_settings(**({"rabbitmq_url": url} if url else {}))
        self.url = url or self.settings.rabbitmq_url
        self.topology = Topology.from_settings(self.settings)
        options: dict[str, Any] = {"name": name, "publish_timeout": self.settings.publish_timeout}
        self.broker: Broker = open_broker(self.url, self.topology, **options)
        self.index = index if index is not None else StatusIndex(index_max_jobs or DEFAULT_MAX_JOBS)
        self.replay_from = replay_from
        self.follow_results = follow_results
        self._results: Subscription | None = None
        # Readback needs a reader of the stream: a queue that follows none cannot check its records.
        readback = self.settings.readback_seconds if follow_results else 0.0
        self.events = EventBatcher(self.broker, readback=readback)
        self._records: set[asyncio.Future[None]] = set()

    async def connect(self) -> None:
        """Connect and follow the results stream; BrokerUnavailable leaves nothing open."""
        async with self.broker.connecting():
            if self.follow_results:
                self._results = await self.broker.follow(
                    self.topology.results_stream, self._read_results, self.replay_from
                )

    def _read_results(self, messages: Sequence[StreamMessage]) -> None:
        self.index.apply_batch(messages)
        self.events.read(messages)  # Accepted records of ours read back (CPW_RESULTS_READBACK)

    async def flush_records(self) -> None:
        """Wait for the Accepted records still on their way (read back too, with CPW_RESULTS_READBACK)."""
        if self._records:
            await asyncio.gather(*self._records, return_exceptions=True)

    async def disconnect(self, timeout: float | None = None) -> None:
        """Let the Accepted records on their way go out, then close (which ends the results stream's
        subscription): all within `timeout` seconds (default CPW_PUBLISH_TIMEOUT), so a broker that is gone or
        answers no more cannot hold a stopping process past its grace period."""
        loop = asyncio.get_running_loop()
        until = loop.time() + (self.settings.publish_timeout if timeout is None else timeout)
        if self._records:
            await asyncio.wait(set(self._records), timeout=until - loop.time())
        await self.broker.close(timeout=max(0.0, until - loop.time()))

    async def __aenter__(self) -> JobQueue:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.disconnect()

    async def submit_job(
        self,
        provider_namespace: str,
        resource_type: str,
        operation: str | Operation,
        request: ResourceRequest | dict[str, Any],
        priority: int = 5,
        *,
        job_id: str | None = None,
        tenant: str | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        headers: dict[str, Any] | None = None,
        delay: float | None = None,
        not_before: datetime | None = None,
    ) -> str:
        """Publish a job and return its id once the broker confirmed it.

        `delay` (seconds) or `not_before` (a timezone-aware datetime) make a delayed job: Accepted at
        once, started no earlier than asked, at most CPW_JOB_MAX_DELAY ahead (ValueError beyond it)."""
        # One validation of the whole job (the request inside it), ~7 us less per job than
        # validating the request, copying it with its namespace and type, then the job around it.
        data = request.model_dump() if isinstance(request, ResourceRequest) else dict(request)
        data["provider_namespace"] = data.get("provider_namespace") or provider_namespace
        data["resource_type"] = data.get("resource_type") or resource_type
        fields: dict[str, Any] = {
            "provider_namespace": provider_namespace,
            "resource_type": resource_type,
            "operation": Operation(operation),
            "request": data,
            "priority": priority,
            "tenant": tenant,
            "timeout": timeout,
            "max_attempts": max_attempts,
        }
        if job_id:
            fields["id"] = job_id
        if delay is not None or not_before is not None:
            fields["submitted_at"] = now = time.time()
            fields["not_before"] = now + self.check_delay(delay, not_before, now)
        job = Job.model_validate(fields)
        await self.submit(job, headers=headers)
        return job.id

    async def submit(self, job: Job, *, headers: dict[str, Any] | None = None) -> None:
        """Publish a prepared job."""
        await self.submit_encoded(job.model_dump_json().encode(), job, headers=headers)

    async def submit_encoded(
        self,
        body: bytes,
        job: Job,
        *,
        headers: dict[str, Any] | None = None,
        idempotency: tuple[str, str] | None = None,
    ) -> None:
        """Publish a job already encoded as `body` (the API encodes its own); `job` describes it.

        Raises BrokerUnavailable or UnroutableJob when the broker did not take the job. Once it did,
        nothing raises: a caller that retried then would submit the job twice. Returns once the job
        is confirmed; its Accepted record (with `idempotency`, the key and request fingerprint, see
        events.accepted_record) follows in the background, and with CPW_RESULTS_READBACK it is
        published again if this queue does not read it back from the stream in time.
        """
        message_headers = {JOB_ID: job.id, **(headers or {})}
        # With tracing on, the job's headers carry the trace to the worker (tracing.py).
        with (
            tracing.publish_span(self.topology.exchange, message_headers, job_id=job.id, routing_key=job.routing_key)
            if tracing.enabled
            else tracing.NO_SPAN
        ):
            wait = None if job.not_before is None else job.not_before - time.time()
            if wait is not None and wait > 0:
                await self.broker.publish_delayed(
                    body, message_id=job.id, priority=job.priority, headers=message_headers, delay=wait
                )
            else:
                await self.broker.publish_job(
                    body,
                    message_id=job.id,
                    routing_key=job.routing_key,
                    priority=job.priority,
                    headers=message_headers,
                )
        # Only a confirmed job gets its Accepted record: a failed publish leaves no phantom behind.
        self.index.accept(job)
        if self.topology.accepted_on_stream:
            # The record's own confirm is not waited for: the job is safe once its confirm came, and a
            # lost record costs only its early visibility to other readers (worker events carry the
            # tenant). Waiting for it made every submission two confirm round trips instead of one.
            record = self.events.append(accepted_record(job.id, job.submitted_at, body, idempotency=idempotency))
            self._records.add(record)
            record.add_done_callback(partial(self._record_done, job.id))

    def check_delay(self, delay: float | None, not_before: datetime | None, now: float) -> float:
        """The delay in seconds that `delay` or `not_before` asks for; ValueError naming the limit if it is
        not a number of seconds from 0 to CPW_JOB_MAX_DELAY."""
        limit = self.settings.job_max_delay
        if delay is not None and not_before is not None:
            raise ValueError("give delay or not_before, not both")
        if not_before is not None:
            if not isinstance(not_before, datetime) or not_before.tzinfo is None:
                raise ValueError("not_before must be a timezone-aware datetime")
            delay = max(not_before.timestamp() - now, 0.0)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= limit:
            raise ValueError(f"the delay must be a number of seconds from 0 to {limit:g} (CPW_JOB_MAX_DELAY)")
        return float(delay)

    def _record_done(self, job_id: str, record: asyncio.Future[None]) -> None:
        self._records.discard(record)
        if not record.cancelled() and record.exception() is not None:
            log.warning("Accepted record of job %s not published; readers learn of the job from its events", job_id)

    async def get_job_result(self, job_id: str, timeout: float | None = 30.0) -> JobResult | None:
        """The job's terminal state; None if it is not terminal within `timeout` seconds."""
        return await self.index.wait(job_id, timeout)

    def get_job_status(self, job_id: str) -> JobResult | None:
        """The job's current state as this process has read it from the results stream."""
        return self.index.get(job_id)

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        tenant: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> JobPage:
        """A page of the jobs this process has read from the results stream, newest first, as the API's
        `GET /jobs` pages them: `status` and `tenant` filter (tenant None: every tenant's), `limit` is 1 to
        1000 (ValueError otherwise), `after` is the previous page's `JobPage.after`."""
        return self.index.list_jobs(status=status, tenant=tenant, limit=limit, after=after)

    async def cancel_job(
        self, job_id: str, *, reason: str = "canceled by request", job: JobResult | None = None
    ) -> None:
        """Ask the workers to cancel: a running job is stopped, a queued one is skipped.

        A delayed job still waiting (`job`, the caller's view of it, or this queue's; Accepted with
        not_before ahead) is Canceled at once: no worker holds it, so this process records its Canceled
        event, and the request tells workers to skip it when it arrives. Readers keep the first
        terminal event, so a worker that did start it meanwhile cannot make the job end twice."""
        job = job or self.index.get(job_id)
        now = time.time()
        waiting = job is not None and job.status is JobStatus.ACCEPTED and (job.not_before or 0) > now
        request: dict[str, Any] = {"type": "cancel", "job_id": job_id, "reason": reason, "at": now}
        if waiting:
            request["not_before"] = job.not_before  # type: ignore[union-attr]  # workers keep it until then
        await self.broker.publish_control(orjson.dumps(request), {JOB_ID: job_id})
        if waiting:
            assert job is not None
            event = JobEvent(
                job_id=job_id,
                type=EventType.CANCELED,
                attempt=0,  # it never ran
                tenant=job.tenant,
                error=JobError(code="Canceled", message=reason),
            )
            await self.events.publish(event.model_dump_json(exclude_none=True).encode())

    async def get_queue_stats(self) -> QueueStats:
        return await self.broker.queue_stats()
