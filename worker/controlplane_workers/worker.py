"""ProviderWorker: consume jobs, run the provider, publish the outcome, then ack.

The order is the delivery guarantee: the outcome is confirmed by the broker before the job is
acked, so a crash at any point leads to a redelivery, never to a lost job. A redelivered job may
run twice; readers keep the first terminal event (see status.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import ValidationError
from pydantic_core import to_json

from . import metrics, tracing
from ._version import __version__
from .broker import Broker, Delivery, StreamMessage, Subscription, open_broker
from .broker.base import ATTEMPT, BROKER_DELIVERY_COUNT, DELIVERY_COUNT, DETAIL, FIRST_DEATH_QUEUE, JOB_ID, REASON
from .cancels import CancelMemory
from .context import JobContext, set_current_job
from .errors import BrokerUnavailable, PermanentError, ProviderError, UnroutableJob
from .events import EventBatcher
from .logs import Bursts, job_id_var
from .lookups import CancelLookups, Keep, LookupFailed
from .models import EventType, Job, JobError, JobEvent
from .providers import ProviderLookup, call_provider, is_sync, provider_method, to_jsonable
from .redact import redact_text
from .retry import backoff
from .role import WorkerRole
from .settings import Settings
from .syncpool import SyncPool
from .topology import Topology

log = logging.getLogger(__name__)

# Attempts whose outcome this worker published and acked (or tried to ack): a redelivery of one is
# settled without running the provider again.
SETTLED_MEMORY = 10_000
# A delayed job that arrives early by this host's clock: up to this many seconds are waited out here,
# a longer wait goes back into the delay cascade.
REPARK_AFTER = 1.0
# Seconds before a job whose outcome could not be published is handed back to the broker.
OUTCOME_LOST_BACKOFF = 1.0
# A delayed job that arrives while the worker still reads the older waiting jobs' cancel requests waits this
# long for them, then goes back into the delay cascade for as long again.
BACKFILL_WAIT = 5.0
# Seconds a scan of the control stream for delayed jobs' cancel requests may take (past the memory's limit
# only; a job that asks while one runs waits for it, then for the next), and how much earlier than the
# job's submission it starts reading (clocks differ).
LOOKUP_TIMEOUT = 60.0
CLOCK_MARGIN = 60.0


@dataclass
class WorkerStats:
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    redelivered: int = 0
    ack_lost: int = 0
    redeliveries_settled: int = 0
    cancel_waits: int = 0  # delayed jobs sent back to wait until the older cancel requests are read
    cancel_scans: int = 0  # reads of the control stream to look up cancel requests dropped past the memory's limit
    started_at: float = field(default_factory=time.time)


class ProviderWorker(WorkerRole):
    """The role that runs provider operations for jobs from the queue, up to `max_concurrent_jobs` at once."""

    def __init__(self, settings: Settings, providers: ProviderLookup, broker: Broker | None = None) -> None:
        super().__init__(settings, providers)
        self.providers: ProviderLookup = providers
        self.topology = Topology.from_settings(settings)
        self.broker = broker or open_broker(
            settings.rabbitmq_url,
            self.topology,
            name=f"cpw-worker {settings.worker_id}",
            publish_timeout=settings.publish_timeout,
        )
        self.worker_id = settings.worker_id
        self.stats = WorkerStats()
        self._bursts = Bursts(log)
        self.events = EventBatcher(self.broker, readback=settings.readback_seconds)
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.cancel_requests = CancelMemory(
            settings.cancel_memory,
            grace=settings.cancel_window,
            waiting_limit=settings.cancel_memory,
            on_drop=self._cancel_dropped,
        )
        self.cancel_lookups = CancelLookups(self._lookup_scan, LOOKUP_TIMEOUT)
        # Set once the waiting jobs' cancel requests from before the cancel window are read (`_backfill`).
        self.backfilled = asyncio.Event()
        self._control_from: int | None = None  # the first offset the control stream's reader got
        self._backfill: asyncio.Task[None] | None = None
        self.draining = False
        self.consuming = False
        self._consumer: Subscription | None = None
        self._control: Subscription | None = None
        self._results: Subscription | None = None  # with readback: this worker's outcomes read back
        self._heartbeat: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._canceled_by_request: set[str] = set()
        self._marker: _Marker | None = None  # the start-up read's, met by the window's follower
        # The broker takes a delivery back when its channel closes (consumer timeout, lost
        # connection) while the job may still run here: the redelivery waits for that run.
        self._running_attempt: dict[str, int] = {}
        self._attached: dict[tuple[str, int], list[Delivery]] = {}
        self._settled: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._exhausted_since: float | None = None  # when every sync thread became stuck
        # A quorum queue counts deliveries itself (x-delivery-count); on a classic queue the workers do.
        self.counts_deliveries = self.topology.queue_type != "quorum"
        self._handing_back: set[asyncio.Task[Any]] = set()
        self.sync_pool = SyncPool(
            settings.sync_threads or settings.max_concurrent_jobs, on_change=self._stuck_threads_changed
        )
        self.broker.on_reconnect.append(metrics.RECONNECTS.inc)
        metrics.CAPACITY.set(settings.max_concurrent_jobs)
        metrics.STUCK_THREADS.set(0)

    # -- lifecycle
    @property
    def ready(self) -> bool:
        return self.consuming and not self.draining and self.broker.connected.is_set() and not self.sync_pool.exhausted

    @property
    def alive(self) -> bool:
        """Every sync thread stuck for `CPW_STUCK_RESTART_AFTER` seconds: a restart frees them, waiting may not."""
        limit = self.settings.stuck_restart_after
        since = self._exhausted_since
        return not (limit and since is not None and time.monotonic() - since > limit)

    def _stuck_threads_changed(self, stuck: int) -> None:
        exhausted = self.sync_pool.exhausted
        if exhausted and self._exhausted_since is None:
            self._exhausted_since = time.monotonic()
        elif not exhausted:
            self._exhausted_since = None
        metrics.STUCK_THREADS.set(stuck)
        metrics.READY.set(1 if self.ready else 0)
        if self.sync_pool.exhausted:
            log.error(
                "all %d sync provider threads are stuck in calls whose jobs ended; not ready, sync jobs go back "
                "to the queue until one returns",
                self.sync_pool.size,
                extra={"stuck_threads": stuck},
            )

    async def process_job(self, job: Job) -> Any:
        """Run one job's provider operation here, without the queue (the seed's job-processing interface)."""
        provider = self.providers.get_provider(job.provider_namespace, job.resource_type)
        method = None if provider is None else provider_method(provider, job.operation, self.sync_pool.run)
        if method is None:
            raise PermanentError(
                f"no provider method for {job.provider_namespace}/{job.resource_type} {job.operation.value}",
                code="UnknownProvider",
            )
        request = job.request.model_copy(update={"tenant": job.tenant})
        return to_jsonable(await call_provider(method, request, self.sync_pool.run))

    async def start(self) -> None:
        """Connect and start consuming; BrokerUnavailable (retried by the caller) leaves nothing open."""
        async with self.broker.connecting():
            if self.events.readback is not None:  # from now on: the outcomes this worker is about to publish
                self._results = await self.broker.follow(self.topology.results_stream, self.events.read, "next")
            # Only the cancel window before consuming: a request older than that counts only for a delayed
            # job still waiting, and those are read from further back in the background (`_read_waiting_cancels`).
            now = datetime.now(UTC)
            window = timedelta(seconds=self.settings.cancel_window)
            self._control = await self.broker.follow(self.topology.control_stream, self._on_control, now - window)
            await self._read_cancel_backlog()
            self._consumer = await self.broker.consume_jobs(self.handle, self.settings.max_concurrent_jobs)
        self.consuming = True
        self._backfill = asyncio.create_task(
            self._read_waiting_cancels(now - window - timedelta(seconds=self.settings.job_max_delay))
        )
        metrics.DLQ_BOUNDED.set(0 if self.broker.dlq_bounded is False else 1)
        self._heartbeat = asyncio.create_task(self._heartbeats())
        log.info("worker ready", extra={"capacity": self.settings.max_concurrent_jobs})

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop consuming, let running jobs finish within the drain timeout, requeue the rest.

        The broker bounds each of its steps (CPW_PUBLISH_TIMEOUT, none when the connection is gone), and the
        steps after the drain share one such budget: with the drain window counted from here, a broker that
        is gone or answers no more cannot hold the process past drain + one publish timeout."""
        drain = self.settings.drain_timeout if drain_timeout is None else drain_timeout
        loop = asyncio.get_running_loop()
        drained_by = loop.time() + drain
        self.draining = True
        if self._consumer is not None:
            await self._consumer.cancel()
        self.consuming = False
        log.info("draining", extra={"in_flight": len(self.running), "drain_timeout": drain})
        if self.running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(drained_by):
                    await self._idle.wait()
        for task in list(self.running.values()):
            task.cancel(msg="drain timeout")
        if self.running:
            await asyncio.gather(*self.running.values(), return_exceptions=True)
        until = loop.time() + self.settings.publish_timeout
        handing_back = self._handing_back - {asyncio.current_task()}
        if handing_back:  # copies being put back: closing now would leave a copy and requeue the original too
            await asyncio.wait(handing_back, timeout=until - loop.time())
        for background in (self._heartbeat, self._backfill):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        await self.cancel_lookups.close()
        with contextlib.suppress(TimeoutError):  # confirmed like any publish: it waits as long as one
            async with asyncio.timeout_at(until):
                await self._send_heartbeat(stopping=True)
        await self.broker.close(timeout=max(0.0, until - loop.time()))  # the stream subscriptions end with it
        self.sync_pool.shutdown()
        log.info("worker stopped", extra={"processed": self.stats.processed})

    # -- control stream: cancel requests
    async def _read_cancel_backlog(self, timeout: float = 10.0) -> None:
        """Consume jobs only once the cancel requests already on the stream are read: a worker that
        started consuming first could run a job that was canceled while it sat in the queue. A marker
        of our own, appended now, tells when the window's follower (`_on_control`) has caught up."""
        self._marker = _Marker(self.worker_id)
        if not await self._catch_up(self._marker, timeout):
            log.warning("cancel requests not caught up in %.0fs; consuming anyway", timeout)

    async def _catch_up(self, marker: _Marker, timeout: float | None) -> bool:
        """Append `marker` to the control stream and wait until its reader meets it, having read every request
        appended before it: False if not within `timeout`. The start-up read and every scan end this way.
        Raises BrokerUnavailable if the broker refused the marker."""
        await self.broker.publish_control(orjson.dumps({"type": "marker", "marker": marker.text}), {})
        try:
            await asyncio.wait_for(marker.reached.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _on_control(self, messages: Sequence[StreamMessage]) -> None:
        if self._control_from is None and messages:
            self._control_from = messages[0].offset
        for message in messages:
            request = _control_request(message.body)
            if isinstance(request, str):
                if self._marker is not None:
                    self._marker.meet(request)
                continue
            if request is None:
                continue
            job_id, reason, not_before = request
            self.cancel_requests.add(job_id, reason, not_before)
            task = self.running.get(job_id)
            if task is not None:
                self._canceled_by_request.add(job_id)
                task.cancel(msg="cancel requested")

    async def _read_waiting_cancels(self, since: datetime) -> None:
        """Read the cancel requests of delayed jobs still waiting from `since` on, the longest delay back,
        in the background: the start reads only the cancel window, so it takes as long whatever the delay.
        A delayed job that arrives before this ends waits for it (`_not_canceled_while_waiting`)."""
        began, kept = time.monotonic(), len(self.cancel_requests.waiting)

        def keep(job_id: str, reason: str, not_before: float | None) -> None:
            if not_before is not None and not_before + self.cancel_requests.grace > time.time():
                self.cancel_requests.add(job_id, reason, not_before)

        while True:
            try:  # up to where the window's reader began (each request once), or the end if it got nothing
                if await self._scan_control(since, keep, None, end=self._control_from):
                    break
            except Exception:  # a bug here must not leave delayed jobs waiting for ever unseen
                log.exception("reading the waiting jobs' cancel requests failed; reading them again")
            await asyncio.sleep(OUTCOME_LOST_BACKOFF)  # the broker is away: the scan starts again from `since`
        self.backfilled.set()
        log.info(
            "cancel requests of waiting jobs read in %.1fs",
            time.monotonic() - began,
            extra={"waiting_cancels": len(self.cancel_requests.waiting) - kept},
        )

    async def _scan_control(
        self,
        since: datetime,
        keep: Keep,
        timeout: float | None,
        end: int | None = None,
    ) -> bool:
        """Hand every cancel request on the control stream from `since` up to offset `end` or else now to
        `keep`; False if the end (or a marker of our own, appended now) was not reached within `timeout`
        or the broker failed."""
        marker = _Marker(self.worker_id)

        def on_messages(messages: Sequence[StreamMessage]) -> None:
            for message in messages:
                if marker.reached.is_set() or (end is not None and message.offset >= end):
                    marker.reached.set()
                    return
                request = _control_request(message.body)
                if isinstance(request, tuple):
                    keep(*request)
                elif request is not None:
                    marker.meet(request)

        try:
            subscription = await self.broker.follow(self.topology.control_stream, on_messages, since)
        except BrokerUnavailable:
            return False
        try:
            return await self._catch_up(marker, timeout)
        except BrokerUnavailable:
            return False
        finally:
            if not self.draining:  # else closed with the broker, within stop's one budget
                await subscription.cancel()  # bounded by the broker

    async def _lookup_scan(self, since: datetime, keep: Keep, timeout: float) -> bool:
        """A scan for the look-ups of requests dropped past the memory's limit (`_not_canceled_while_waiting`)."""
        self.stats.cancel_scans += 1
        return await self._scan_control(since, keep, timeout)

    def _cancel_dropped(self, kind: str) -> None:
        metrics.CANCELS_DROPPED.labels(kind).inc()
        self._bursts.warning(
            f"cancel requests of {kind} jobs past CPW_CANCEL_MEMORY ({self.settings.cancel_memory}): "
            + (
                "the oldest dropped"
                if kind == "recent"
                else "the one whose job starts last dropped; looked up on the control stream when its job arrives"
            )
        )

    # -- one delivery
    async def handle(self, delivery: Delivery) -> None:
        if delivery.redelivered:
            self.stats.redelivered += 1
            metrics.REDELIVERED.inc()
        # A worker's copy (it carries a delivery count) is a redelivery too: it may be of an attempt running here.
        if (delivery.redelivered or DELIVERY_COUNT in delivery.headers) and await self._redelivery_of_own_attempt(
            delivery
        ):
            return
        if delivery.redelivered and self.counts_deliveries:
            await self._count_lost_delivery(delivery)
            return
        if not self.counts_deliveries and _broker_count(delivery) >= self.topology.delivery_limit:
            # The last delivery the quorum queue makes: past x-delivery-limit it would dead-letter the job
            # itself, and no reader would learn that it ended.
            await self._past_delivery_limit(delivery, _broker_count(delivery))
            return
        if self.draining:
            await self._hand_back(delivery)
            return
        if tracing.enabled:  # one span per delivery, in the trace the job's headers carry
            with tracing.consume_span(
                self.topology.jobs_queue,
                delivery.headers,
                message_id=delivery.message_id,
                attempt=delivery.attempt,
                redelivered=delivery.redelivered,
                worker_id=self.worker_id,
                routing_key=delivery.routing_key,
            ):
                await self._handle(delivery)
        else:
            await self._handle(delivery)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            job = Job.model_validate_json(delivery.body)
        except ValidationError as exc:
            await self._dead_letter(delivery, None, "malformed", _first_error(exc))
            return
        token = job_id_var.set(job.id)
        set_current_job(
            JobContext(
                job.id, delivery.attempt, job.max_attempts or self.settings.max_attempts, self.worker_id, job.tenant
            )
        )
        try:
            await self._run(delivery, job)
        finally:
            job_id_var.reset(token)

    async def _run(self, delivery: Delivery, job: Job) -> None:
        attempt = delivery.attempt
        if job.id in self.cancel_requests:
            await self._finish(delivery, job, attempt, EventType.CANCELED, error=self._cancel_error(job.id))
            return
        if job.not_before is not None and not (
            await self._due(delivery, job) and await self._not_canceled_while_waiting(delivery, job)
        ):
            return
        provider = self.providers.get_provider(job.provider_namespace, job.resource_type)
        if provider is None:
            await self._dead_letter(
                delivery, job, "unknown-provider", f"no provider for {job.provider_namespace}/{job.resource_type}"
            )
            return
        method = provider_method(provider, job.operation, self.sync_pool.run)
        if method is None:
            await self._dead_letter(
                delivery, job, "unknown-operation", f"provider has no method for operation {job.operation.value}"
            )
            return

        labels = (job.provider_namespace, job.resource_type, job.operation.value)
        if is_sync(method) and self.sync_pool.exhausted:
            # No thread can run it: waiting here would only time it out and dead-letter a good job.
            await asyncio.sleep(OUTCOME_LOST_BACKOFF)  # another worker, or a freed thread, takes it then
            await self._hand_back(delivery)
            metrics.JOBS.labels(*labels, "requeued").inc()
            return
        if attempt == 1:
            # a delayed job waits in the queue from its start time on, not from its submission
            queued_since = job.submitted_at if job.not_before is None else max(job.submitted_at, job.not_before)
            metrics.QUEUE_WAIT.labels(*labels).observe(max(time.time() - queued_since, 0.0))
        task = asyncio.current_task()
        assert task is not None
        self.running[job.id] = task
        self._running_attempt[job.id] = attempt
        self._idle.clear()
        metrics.IN_FLIGHT.inc()
        loop = asyncio.get_running_loop()
        running_event = loop.call_later(self.settings.running_event_delay, self._announce_running, job, attempt)
        started = time.monotonic()
        outcome: str
        try:
            async with asyncio.timeout(job.timeout or self.settings.job_timeout):
                request = job.request.model_copy(update={"tenant": job.tenant})  # the job's tenant, not the body's
                call = call_provider(method, request, self.sync_pool.run)
                if tracing.enabled:
                    call = tracing.provider_span(
                        call,
                        name=f"provider {labels[0]}/{labels[1]} {labels[2]}",
                        attributes={
                            "cpw.provider.namespace": labels[0],
                            "cpw.resource.type": labels[1],
                            "cpw.operation": labels[2],
                            "cpw.job.attempt": attempt,
                        },
                    )
                result = await call
        except asyncio.CancelledError:
            running_event.cancel()
            self._untrack(job.id)
            if job.id in self._canceled_by_request:
                self._canceled_by_request.discard(job.id)
                task.uncancel()
                outcome = "canceled"
                await self._finish(delivery, job, attempt, EventType.CANCELED, error=self._cancel_error(job.id))
            else:  # drain timeout or shutdown: hand the job back to the broker
                task.uncancel()
                outcome = "requeued"
                await self._hand_back(delivery)
            metrics.JOBS.labels(*labels, outcome).inc()
            if tracing.enabled:
                tracing.set_attributes({"cpw.job.outcome": outcome})
            return
        except TimeoutError:
            outcome = "timeout"
            error = JobError(
                code="JobTimeout", message=f"provider did not finish within {job.timeout or self.settings.job_timeout}s"
            )
            await self._failed_attempt(delivery, job, attempt, error, retryable=True)
        except PermanentError as exc:
            outcome = "failed"
            if exc.dead_letter:  # the provider asked for the job to be kept for an operator
                await self._failed_attempt(delivery, job, attempt, _provider_error(exc), retryable=False)
            else:  # an ordinary outcome: Failed with its code, not a dead letter (issue 17, item 5)
                await self._finish(delivery, job, attempt, EventType.FAILED, error=_provider_error(exc))
        except ProviderError as exc:  # RetryableError: retried until attempts run out
            outcome = "error"
            await self._failed_attempt(delivery, job, attempt, _provider_error(exc), retryable=True)
        except Exception as exc:  # unexpected: retried like RetryableError, its text stays in the log
            outcome = "error"
            await self._failed_attempt(delivery, job, attempt, _unexpected_error(exc), retryable=True)
        else:
            result = to_jsonable(result)
            size = len(to_json(result))
            if size > self.settings.max_result_bytes:
                outcome = "failed"
                await self._finish(delivery, job, attempt, EventType.FAILED, error=self._too_large(size))
            else:
                outcome = "succeeded"
                await self._finish(delivery, job, attempt, EventType.SUCCEEDED, result=result)
        finally:
            running_event.cancel()
            self._untrack(job.id)
        metrics.JOBS.labels(*labels, outcome).inc()
        metrics.JOB_DURATION.labels(*labels, outcome).observe(time.monotonic() - started)
        if tracing.enabled:
            tracing.set_attributes({"cpw.job.outcome": outcome})

    async def _due(self, delivery: Delivery, job: Job) -> bool:
        """Whether a delayed job may start now. The cascade never delivers early by the broker's clock;
        by this host's clock a job may still be early (clocks differ): a moment is waited out here, a
        longer wait goes back into the cascade. So no worker starts a job before its not_before.

        Sent back, it is a hand-back (`_hand_back`): a confirmed copy, then an ack that does not mark the
        attempt settled (a later delivery of the copy must run, here too). The copy keeps the headers:
        the attempt and the deliveries it lost so far (`x-cpw-delivery-count`, not one more: a
        redelivery on a classic queue was counted before it came here). The attempt has not run yet, so
        its count is not reset, as a retry's is: a worker whose clock lags cannot wipe the count of a
        job that kills its workers. (A quorum queue's own count does restart: the copy is a new message.)"""
        early = (job.not_before or 0.0) - time.time()
        if early <= 0:
            return True
        if early <= REPARK_AFTER:
            await asyncio.sleep(early)  # the wait itself, not a synchronisation
            return job.id not in self.cancel_requests or await self._run_canceled(delivery, job)
        await self._repark(delivery, job, early)
        return False

    async def _repark(self, delivery: Delivery, job: Job, delay: float) -> None:
        """Send a job back into the delay cascade for `delay` seconds, as a hand-back (see `_due`)."""
        with self._handing(delivery):
            try:
                await self.broker.publish_delayed(
                    delivery.body, message_id=job.id, priority=delivery.priority, headers=delivery.headers, delay=delay
                )
                await self._settle(delivery, ack=True, copied=True)
                return
            except (BrokerUnavailable, UnroutableJob):  # the cascade refused it: back to the queue, never lost
                pass
        await self._outcome_lost(delivery)

    async def _not_canceled_while_waiting(self, delivery: Delivery, job: Job) -> bool:
        """Whether a delayed job that is due may run: False once it was found canceled (its Canceled
        outcome published) or sent back until that is known.

        Its cancel request may be older than the cancel window this worker read before consuming: it is
        known once the older waiting jobs' requests are read (`_read_waiting_cancels`), and a request
        dropped past CPW_CANCEL_MEMORY is looked up on the control stream, one scan for the jobs that ask
        together (`CancelLookups`). Not past `not_before + CPW_CANCEL_WINDOW`: the memory keeps no request
        that long (docs/reliability.md, "Known limits")."""
        assert job.not_before is not None
        if job.not_before + self.cancel_requests.grace <= time.time():
            return True
        if not self.backfilled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.backfilled.wait(), BACKFILL_WAIT)
            if not self.backfilled.is_set():
                self.stats.cancel_waits += 1
                await self._repark(delivery, job, BACKFILL_WAIT)
                return False
        reason = self.cancel_requests.get(job.id)
        if reason is None and self.cancel_requests.may_have_dropped(job.not_before):
            since = datetime.fromtimestamp(job.submitted_at - CLOCK_MARGIN, UTC)
            try:
                reason = await self.cancel_lookups.reason(job.id, since)
            except LookupFailed:
                metrics.CANCEL_LOOKUPS.labels("unknown").inc()
                log.warning("cancel request of a waiting job not looked up in time; the job goes back to wait")
                await self._repark(delivery, job, BACKFILL_WAIT)
                return False
            metrics.CANCEL_LOOKUPS.labels("not-canceled" if reason is None else "canceled").inc()
            # one the follower read meanwhile counts too (appended after the scan's marker, it missed it)
            reason = reason or self.cancel_requests.get(job.id)
        if reason is None:
            return True
        await self._run_canceled(delivery, job, reason)
        return False

    async def _run_canceled(self, delivery: Delivery, job: Job, reason: str | None = None) -> bool:
        error = self._cancel_error(job.id) if reason is None else JobError(code="Canceled", message=reason)
        await self._finish(delivery, job, delivery.attempt, EventType.CANCELED, error=error)
        return False

    async def _redelivery_of_own_attempt(self, delivery: Delivery) -> bool:
        """True if this redelivery is an attempt this worker runs or has finished; it is then
        settled with that attempt (the consumer timeout closed the channel of a long job, or the
        ack was lost), instead of the provider running the job a second time here."""
        key = _key(delivery)
        if key is None:
            return False
        if key in self._settled:
            self.stats.redeliveries_settled += 1
            await self._settle(delivery, ack=True)
            return True
        if self._running_attempt.get(key[0]) == key[1]:
            self.stats.redeliveries_settled += 1
            self._attached.setdefault(key, []).append(delivery)  # settled when the running attempt is
            return True
        return False

    async def _count_lost_delivery(self, delivery: Delivery) -> None:
        """A redelivery on a classic queue: the worker that held the job stopped without settling it (it
        died, was killed or lost its channel), since every deliberate hand-back is a copy, never a
        redelivery (`_hand_back`). The job goes back as a copy that counts it; once
        `CPW_QUEUE_DELIVERY_LIMIT` deliveries were lost it is dead-lettered instead, as on a quorum queue
        (`handle`): a job that kills its worker would otherwise come back forever and kill every worker
        it reaches. So a job runs at most that many times on either queue type."""
        lost = _lost_deliveries(delivery)
        if lost < self.topology.delivery_limit:
            await self._hand_back(delivery)
            return
        await self._past_delivery_limit(delivery, lost)

    async def _past_delivery_limit(self, delivery: Delivery, lost: int) -> None:
        """Dead-letter a job whose `lost` earlier deliveries ended without an outcome, with its terminal event."""
        try:
            job: Job | None = Job.model_validate_json(delivery.body)
        except ValidationError:
            job = None
        detail = (
            f"delivered {lost} times and each time its worker stopped before settling it (a crash, a kill "
            f"or a lost connection); CPW_QUEUE_DELIVERY_LIMIT is {self.topology.delivery_limit}"
        )
        error = JobError(
            code="DeliveryLimitExceeded",
            message=f"The job was delivered {lost} times and each time its worker stopped before the job ended "
            "(a crash, a kill or a lost connection); it was set aside for an operator.",
        )
        await self._dead_letter(delivery, job, "delivery-limit", detail, error=error)

    async def _hand_back(self, delivery: Delivery) -> None:
        """Give a job back to the queue to run again: drain timeout, shutdown, no free thread, outcome
        not published, or a redelivery just counted.

        On a classic queue the job goes back as a confirmed copy at the tail of the job queue (same
        body, id, priority and headers, the deliveries lost so far as its delivery count), then the
        delivery is acked. A reject with requeue would flag the next delivery `redelivered`, and there
        that flag must mean only "a worker stopped holding it". If the broker refuses the copy, the job
        is rejected with requeue after all (never lost), and its next delivery counts as a lost one. A
        quorum queue counts deliveries itself: a plain reject with requeue, as before.
        """
        if self.counts_deliveries:
            with self._handing(delivery):
                try:
                    await self.broker.republish_job(
                        delivery.body,
                        message_id=delivery.message_id,
                        priority=delivery.priority,
                        headers={**delivery.headers, DELIVERY_COUNT: _lost_deliveries(delivery)},
                    )
                    await self._settle(delivery, ack=True, copied=True)
                    return
                except (BrokerUnavailable, UnroutableJob):
                    log.warning("job not copied back to the queue; rejected with requeue, its next delivery counts")
                    await asyncio.sleep(OUTCOME_LOST_BACKOFF)  # a broker that refuses now would get it back at once
        await self._settle(delivery, ack=False, requeue=True)

    @contextlib.contextmanager
    def _handing(self, delivery: Delivery) -> Iterator[None]:
        """While a copy of the job is put back and the delivery acked: a drain waits for it (closing
        midway would leave the copy and requeue the original too), and the attempt is no longer tracked
        here (the copy may come back to this worker at once: it must run, not wait for this attempt)."""
        task = asyncio.current_task()
        assert task is not None
        self._handing_back.add(task)
        key = _key(delivery)
        if key is not None:
            self._untrack(key[0])
        try:
            yield
        finally:
            self._handing_back.discard(task)

    def _untrack(self, job_id: str) -> None:
        """The job no longer runs in this task (a copy handed back may run here already, in its own task)."""
        if self.running.get(job_id) is not asyncio.current_task():
            return
        del self.running[job_id]
        self._running_attempt.pop(job_id, None)
        metrics.IN_FLIGHT.dec()
        if not self.running:
            self._idle.set()

    def _announce_running(self, job: Job, attempt: int) -> None:
        if job.id in self.running:
            event = JobEvent(
                job_id=job.id, type=EventType.RUNNING, attempt=attempt, worker_id=self.worker_id, tenant=job.tenant
            )
            task = asyncio.ensure_future(self._publish(event))
            task.add_done_callback(_log_failure)

    def _too_large(self, size: int) -> JobError:
        """An ordinary failed outcome, not a dead letter: the job was well-formed and ran; another attempt
        would return as much again. The cap keeps one job from filling every reader's index (issue 16)."""
        cap = self.settings.max_result_bytes
        log.warning("result too large: %d bytes, cap %d (CPW_MAX_RESULT_BYTES)", size, cap, extra={"size": size})
        return JobError(
            code="ResultTooLarge",
            message=f"The provider's result is {size} bytes of JSON, more than the {cap} bytes a result may have.",
        )

    def _cancel_error(self, job_id: str) -> JobError:
        return JobError(code="Canceled", message=self.cancel_requests.get(job_id) or "canceled by request")

    async def _failed_attempt(
        self, delivery: Delivery, job: Job, attempt: int, error: JobError, *, retryable: bool
    ) -> None:
        max_attempts = job.max_attempts or self.settings.max_attempts
        if retryable and attempt < max_attempts:
            delay = backoff(
                attempt,
                base=self.settings.retry_base_delay,
                cap=self.settings.retry_max_delay,
                jitter=self.settings.retry_jitter,
            )
            queue_attempt = min(attempt + 1, self.topology.max_attempts)
            # A new message, so its delivery count starts again, as it does on a quorum queue.
            headers = {**_without(delivery.headers, DELIVERY_COUNT), ATTEMPT: attempt + 1}
            try:
                # With tracing on, the retry's headers carry this attempt's trace to the next attempt.
                with (
                    tracing.publish_span(
                        self.topology.retry_queue(queue_attempt),
                        headers,
                        job_id=job.id,
                        attributes={"cpw.job.attempt": attempt + 1, "cpw.retry.delay_seconds": round(delay, 3)},
                    )
                    if tracing.enabled
                    else tracing.NO_SPAN
                ):
                    await self.broker.publish_retry(
                        delivery.body,
                        message_id=job.id,
                        priority=delivery.priority,
                        headers=headers,
                        attempt=queue_attempt,
                        delay=delay,
                    )
                await self._publish(
                    JobEvent(
                        job_id=job.id,
                        type=EventType.RETRYING,
                        attempt=attempt,
                        worker_id=self.worker_id,
                        tenant=job.tenant,
                        error=error,
                        retry_in=round(delay, 3),
                    )
                )
            except (BrokerUnavailable, UnroutableJob):  # unroutable: its queue is being replaced (migrate.py)
                await self._outcome_lost(delivery)
                return
            self.stats.retried += 1
            metrics.RETRIES.labels(job.provider_namespace, job.resource_type, job.operation.value).inc()
            await self._settle(delivery, ack=True)
            return
        reason = "attempts-exhausted" if retryable else "permanent-error"
        await self._dead_letter(delivery, job, reason, f"{error.code}: {error.message}", error=error)

    async def _finish(
        self,
        delivery: Delivery,
        job: Job,
        attempt: int,
        kind: EventType,
        *,
        result: Any = None,
        error: JobError | None = None,
    ) -> None:
        event = JobEvent(
            job_id=job.id,
            type=kind,
            attempt=attempt,
            worker_id=self.worker_id,
            tenant=job.tenant,
            result=result,
            error=error,
        )
        try:
            await self._publish(event)
        except BrokerUnavailable:
            await self._outcome_lost(delivery)
            return
        if await self._settle(delivery, ack=True):
            self._count(kind)

    async def _dead_letter(
        self, delivery: Delivery, job: Job | None, reason: str, detail: str, *, error: JobError | None = None
    ) -> None:
        """Move a message to the DLQ with the reason in its headers; tell readers the job failed."""
        headers = {
            **delivery.headers,
            REASON: reason,
            DETAIL: redact_text(detail)[:1000],
            FIRST_DEATH_QUEUE: self.topology.jobs_queue,
            "x-cpw-dead-lettered-at": int(time.time()),
            "x-cpw-dead-lettered-by": self.worker_id,
        }
        job_id = job.id if job else (delivery.message_id or delivery.headers.get(JOB_ID))
        log.warning("dead-lettering job: %s", reason, extra={"reason": reason, "detail": headers[DETAIL]})
        try:
            with (
                tracing.publish_span(
                    self.topology.dead_letter_exchange,
                    headers,
                    job_id=str(job_id) if job_id else None,
                    attributes={"cpw.dead_letter.reason": reason},
                )
                if tracing.enabled
                else tracing.NO_SPAN
            ):
                await self.broker.publish_dead_letter(delivery.body, message_id=delivery.message_id, headers=headers)
            if job_id:
                await self._publish(
                    JobEvent(
                        job_id=str(job_id),
                        type=EventType.DEAD_LETTERED,
                        attempt=delivery.attempt,
                        worker_id=self.worker_id,
                        tenant=job.tenant if job else None,
                        error=error or JobError(code=_reason_code(reason), message=detail),
                    )
                )
        except (BrokerUnavailable, UnroutableJob):  # unroutable: its queue is being replaced (migrate.py)
            await self._outcome_lost(delivery)
            return
        if await self._settle(delivery, ack=True):
            self.stats.dead_lettered += 1
            metrics.DEAD_LETTERED.labels(reason).inc()
            self._count(EventType.FAILED)

    async def _publish(self, event: JobEvent) -> None:
        await self.events.publish(event.model_dump_json(exclude_none=True).encode())

    async def _settle(self, delivery: Delivery, *, ack: bool, requeue: bool = False, copied: bool = False) -> bool:
        """Ack or reject, and the same for redeliveries of this attempt that waited for it.

        False when no delivery of the job could be settled (the channel is gone: the broker
        redelivers it). An ack comes only after the outcome (or the retry) was confirmed, so the
        attempt is remembered as settled: a later redelivery of it is acked without a new run. Not
        so an ack after a copy of the job was put back (`copied`): the attempt runs again from it.
        """
        key = _key(delivery)
        if ack and not copied and key is not None:
            self._settled[key] = None
            if len(self._settled) > SETTLED_MEMORY:
                self._settled.popitem(last=False)
        settled = await self._settle_one(delivery, ack, requeue)
        waiting = self._attached.get(key) if key is not None else None
        while waiting:
            settled = await self._settle_one(waiting.pop(0), ack, requeue) or settled
        if key is not None:
            self._attached.pop(key, None)
        return settled

    async def _settle_one(self, delivery: Delivery, ack: bool, requeue: bool) -> bool:
        try:
            if ack:
                await delivery.ack()
            else:
                await delivery.reject(requeue=requeue)
            return True
        except Exception:
            self._lost()
            return False

    async def _outcome_lost(self, delivery: Delivery) -> None:
        """The outcome (or the retry, or the dead letter) could not be published: the job is handed
        back to the queue to run again, with the redeliveries of this attempt that waited for it.

        Not held: a publish can fail while the consuming channel lives on (the publishing channel
        closed alone, a confirm timed out), and a delivery held unacked on a live channel never ends
        (found by the everything-at-once drill). If the channel is gone the settle fails and the
        broker requeues the job anyway."""
        self._lost("outcome not published; the job goes back to the queue to run again")
        await asyncio.sleep(OUTCOME_LOST_BACKOFF)  # a broker that refuses now would get it back at once
        await self._hand_back(delivery)

    def _lost(self, why: str = "broker connection lost before the job was settled; it will be redelivered") -> None:
        self.stats.ack_lost += 1
        metrics.ACK_LOST.inc()
        self._bursts.warning(why)  # one line per outage, not one per job in flight

    def _count(self, kind: EventType) -> None:
        self.stats.processed += 1
        metrics.JOBS_PROCESSED.inc()
        if kind is EventType.SUCCEEDED:
            self.stats.succeeded += 1
        elif kind is EventType.CANCELED:
            self.stats.canceled += 1
            metrics.CANCELED.inc()
        else:
            self.stats.failed += 1
            metrics.JOBS_FAILED.inc()

    # -- heartbeats
    def status(self) -> dict[str, Any]:
        """The seed's /status fields and the fleet view's, from one place."""
        return {
            "worker_id": self.worker_id,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "status": "draining" if self.draining else ("ready" if self.ready else "not-ready"),
            "ready": self.ready,
            "broker_connected": self.broker.connected.is_set(),
            "jobs_processed": self.stats.processed,
            "jobs_succeeded": self.stats.succeeded,
            "jobs_failed": self.stats.failed,
            "jobs_canceled": self.stats.canceled,
            "jobs_retried": self.stats.retried,
            "jobs_dead_lettered": self.stats.dead_lettered,
            "redelivered": self.stats.redelivered,
            "ack_lost": self.stats.ack_lost,
            "redeliveries_settled": self.stats.redeliveries_settled,
            "outcomes_republished": self.events.republished,
            "outcomes_read_twice": self.events.read_twice,
            "in_flight": len(self.running),
            "retries_held": self.broker.retries_held,
            "capacity": self.settings.max_concurrent_jobs,
            "started_at": self.stats.started_at,
            "uptime_seconds": round(time.time() - self.stats.started_at, 3),
        }

    async def _heartbeats(self) -> None:
        while True:
            await self._send_heartbeat()
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _send_heartbeat(self, stopping: bool = False) -> None:
        beat = {**self.status(), "at": time.time(), "interval": self.settings.heartbeat_interval, "role": "worker"}
        if stopping:
            beat["status"] = "stopped"
        await self.broker.publish_heartbeat(orjson.dumps(beat))
        metrics.LAST_HEARTBEAT.set(beat["at"])
        metrics.BROKER_UP.set(1 if self.broker.connected.is_set() else 0)
        metrics.READY.set(1 if self.ready else 0)


class _Marker:
    """A marker of our own on the control stream: the reader that meets it has read every request before it."""

    def __init__(self, worker_id: str) -> None:
        self.text = f"{worker_id}:{time.time_ns()}:{secrets.token_hex(4)}"
        self.reached = asyncio.Event()

    def meet(self, text: str) -> None:
        if text == self.text:
            self.reached.set()


def _control_request(body: bytes) -> tuple[str, str, float | None] | str | None:
    """A control stream message: a cancel request's (job id, reason, not_before), a marker's text, or None."""
    try:
        request = orjson.loads(body)
        if request.get("type") == "marker":
            return str(request.get("marker"))
        job_id = str(request["job_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    not_before = request.get("not_before")
    valid = isinstance(not_before, int | float) and not isinstance(not_before, bool) and math.isfinite(not_before)
    return job_id, str(request.get("reason") or "canceled by request"), not_before if valid else None


def _key(delivery: Delivery) -> tuple[str, int] | None:
    """(job id, attempt) of a job message: what identifies one attempt across redeliveries."""
    job_id = delivery.message_id or delivery.headers.get(JOB_ID)
    return (str(job_id), delivery.attempt) if job_id else None


def _lost_deliveries(delivery: Delivery) -> int:
    """Deliveries of this attempt that ended without a settle: those counted in the message, plus this
    one's predecessor if it is a redelivery (on a classic queue only a lost delivery leads to one)."""
    try:
        counted = max(0, int(delivery.headers.get(DELIVERY_COUNT, 0)))
    except (TypeError, ValueError):
        counted = 0
    return counted + (1 if delivery.redelivered else 0)


def _broker_count(delivery: Delivery) -> int:
    """A quorum queue's count of the earlier deliveries of this message (`x-delivery-count`; 0 on the first)."""
    try:
        return max(0, int(delivery.headers.get(BROKER_DELIVERY_COUNT, 0)))
    except (TypeError, ValueError):
        return 0


def _without(headers: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if k != name}


def _provider_error(exc: ProviderError) -> JobError:
    """A provider's deliberate error: its message is what the provider chose to tell the client (redacted)."""
    code = str(exc.code or type(exc).__name__)
    return JobError(code=code, message=redact_text(str(exc))[:2000] or code)


def _unexpected_error(exc: Exception) -> JobError:
    """Any other exception may quote what the provider sent or read (URLs, headers, keys): the client gets an
    error id, the log gets the type, message and traceback (redacted) under that id. The code stays the
    exception's type name, as before."""
    error_id = secrets.token_hex(8)
    log.warning(
        "provider raised %s (error id %s)",
        type(exc).__name__,
        error_id,
        exc_info=exc,
        extra={"error_id": error_id, "error_type": type(exc).__name__},
    )
    return JobError(code=type(exc).__name__, message=f"The provider failed unexpectedly (error id {error_id}).")


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ())) or "message"
    return f"{where}: {error.get('msg')}"


def _reason_code(reason: str) -> str:
    return "".join(part.capitalize() for part in reason.split("-"))


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("running event not published: %s", task.exception())
