"""Delayed jobs, on the embedded broker and on a real RabbitMQ (fixture `broker_url`).

"Not before time T" is checked on the recorded times (the provider's call time against the job's
not_before), never by sleeping: every wait here awaits the job's status.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta

import pytest

from controlplane_workers import JobResult, JobStatus
from controlplane_workers import worker as worker_module
from controlplane_workers.broker.base import DELIVERY_COUNT
from controlplane_workers.dlq import list_dead_letters
from controlplane_workers.metrics import REGISTRY
from controlplane_workers.models import Job
from tests.support import providers
from tests.support.harness import client, eventually, lose_a_delivery, request, running_worker

NS, TYPE = "Test.Scripted", "things"
# How late a job may start after its not_before: the cascade adds ms per level it waits in; this
# shared 2-core machine, with other suites running, adds the rest.
LATE = 1.0


@pytest.fixture(autouse=True)
def _clear_calls():
    providers.CALLS.clear()
    providers.STARTED.clear()


def started(name: str) -> float:
    [call] = [c for c in providers.CALLS if c["name"] == name]
    return call["wall"]  # the wall clock, as not_before


async def test_a_delayed_job_is_accepted_at_once_and_starts_no_earlier_than_asked(broker_url):
    async with running_worker(broker_url, providers.registry), client(broker_url) as queue:
        before = time.time()
        job_id = await queue.submit_job(NS, TYPE, "create", request("later"), delay=1.0)
        accepted = queue.get_job_status(job_id)
        assert accepted.status is JobStatus.ACCEPTED
        assert accepted.not_before == pytest.approx(before + 1.0, abs=0.5)
        result = await queue.get_job_result(job_id, timeout=15)
    assert result.status is JobStatus.SUCCEEDED and result.not_before == accepted.not_before
    assert result.not_before <= started("later") < result.not_before + LATE
    assert result.not_before <= result.started_at


async def test_delays_in_mixed_order_start_in_delay_order(broker_url):
    # The head-of-line case: with per-message TTLs in one queue the 0.2 s job would wait behind the 1.6 s one.
    delays = [1.6, 0.2, 1.0, 0.6]
    async with running_worker(broker_url, providers.registry), client(broker_url) as queue:
        ids = {d: await queue.submit_job(NS, TYPE, "create", request(f"d{d}"), delay=d) for d in delays}
        results = {d: await queue.get_job_result(job_id, timeout=15) for d, job_id in ids.items()}
    assert all(r.status is JobStatus.SUCCEEDED for r in results.values())
    assert [c["name"] for c in providers.CALLS] == [f"d{d}" for d in sorted(delays)]
    for d, result in results.items():
        assert result.not_before <= started(f"d{d}") < result.not_before + LATE, d


async def test_not_before_takes_a_datetime(broker_url):
    from datetime import UTC, datetime, timedelta

    async with running_worker(broker_url, providers.registry), client(broker_url) as queue:
        at = datetime.now(UTC) + timedelta(seconds=0.5)
        job_id = await queue.submit_job(NS, TYPE, "create", request("dated"), not_before=at)
        result = await queue.get_job_result(job_id, timeout=15)
    assert result.status is JobStatus.SUCCEEDED
    assert result.not_before == pytest.approx(at.timestamp(), abs=0.01) and started("dated") >= at.timestamp()


async def test_cancel_while_waiting_is_canceled_at_once_and_never_runs(broker_url):
    async with running_worker(broker_url, providers.registry) as worker, client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("called-off"), delay=1.5)
        await queue.cancel_job(job_id, reason="not today")
        result = await queue.get_job_result(job_id, timeout=10)
        # Canceled while it still waited, not when it reached a worker
        assert result.status is JobStatus.CANCELED and result.finished_at < result.not_before
        assert result.error.message == "not today" and result.attempts == 0
        # it arrives, and the worker skips it
        await eventually(lambda: worker.stats.canceled == 1, timeout=15)
    assert [c for c in providers.CALLS if c["name"] == "called-off"] == []
    assert queue.index.duplicates == 1  # the worker's Canceled came second and was ignored


async def test_a_worker_started_after_the_cancel_still_skips_the_waiting_job(broker_url):
    # The cancel is older than the worker's cancel window: a worker reads the control stream back over the
    # longest delay too, so it still knows of the cancel when the job arrives.
    async with client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("forgotten"), delay=1.0)
        await queue.cancel_job(job_id)
        assert (await queue.get_job_result(job_id, timeout=10)).status is JobStatus.CANCELED
        async with running_worker(broker_url, providers.registry, cancel_window=0.001) as worker:
            await eventually(lambda: worker.stats.canceled == 1, timeout=15)
    assert providers.CALLS == []


async def test_a_starting_worker_keeps_only_the_cancel_requests_that_can_still_matter(broker_url):
    # Before consuming it reads the cancel window only; older requests count only for a delayed job still
    # waiting, and those it reads from further back in the background: not the rest of a day of requests.
    async with client(broker_url) as queue:
        waiting = await queue.submit_job(NS, TYPE, "create", request("waits"), delay=60)
        await queue.cancel_job(waiting)
        await queue.cancel_job("an-old-queued-job")
        await queue.cancel_job("a-long-done-delayed-job", job=_waiting_until(time.time() + 0.5))
        # Ages them out of the window below: RabbitMQ's stream offsets are in whole seconds, so the worker reads up
        # to a second more than its window. The window leaves the worker's start (connecting, declaring) 3 s to
        # take before the recent one falls out of it too (it failed one CI with a 1 s window and a 2 s sleep).
        await asyncio.sleep(5.0)
        await queue.cancel_job("a-recent-one")
        async with running_worker(broker_url, providers.registry, cancel_window=3.0) as worker:
            assert "a-recent-one" in worker.cancel_requests
            await asyncio.wait_for(worker.backfilled.wait(), 10)
            assert waiting in worker.cancel_requests.waiting
            assert "an-old-queued-job" not in worker.cancel_requests
            assert "a-long-done-delayed-job" not in worker.cancel_requests


def _waiting_until(not_before: float) -> JobResult:
    """The caller's view of a job that is Accepted and waits until `not_before`."""
    return JobResult(job_id="x", status=JobStatus.ACCEPTED, not_before=not_before, submitted_at=not_before - 10)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("limit", [2, 1], ids=["at-the-limit", "over-the-limit"])
async def test_waiting_cancel_requests_past_the_memory_limit_are_looked_up_on_the_stream(broker_url, limit):
    # Two delayed jobs canceled while they wait, one not. At CPW_CANCEL_MEMORY=2 the worker keeps both
    # requests; at 1 it drops the one whose job starts last, says so, and looks that job up on the control
    # stream when it arrives: neither canceled job runs, and the other does.
    dropped = _sample("cpw_worker_cancel_requests_dropped_total", kind="waiting")
    lookups = {o: _sample("cpw_worker_cancel_lookups_total", outcome=o) for o in ("canceled", "not-canceled")}
    async with client(broker_url) as queue:
        ids = [await queue.submit_job(NS, TYPE, "create", request(f"w{i}"), delay=1.0 + 0.5 * i) for i in range(3)]
        for job_id in ids[:2]:
            await queue.cancel_job(job_id, reason="not today")
        async with running_worker(broker_url, providers.registry, cancel_memory=limit) as worker:
            results = [await queue.get_job_result(job_id, timeout=15) for job_id in ids]
            await eventually(lambda: worker.stats.canceled == 2, timeout=15)
    assert [r.status for r in results] == [JobStatus.CANCELED, JobStatus.CANCELED, JobStatus.SUCCEEDED]
    assert [c["name"] for c in providers.CALLS] == ["w2"]
    over = 2 - limit
    assert _sample("cpw_worker_cancel_requests_dropped_total", kind="waiting") - dropped == over
    assert _sample("cpw_worker_cancel_lookups_total", outcome="canceled") - lookups["canceled"] == over
    assert _sample("cpw_worker_cancel_lookups_total", outcome="not-canceled") - lookups["not-canceled"] == over


@pytest.mark.parametrize("limit", [2, 1], ids=["at-the-limit", "over-the-limit"])
async def test_delayed_jobs_due_together_share_the_look_ups_of_their_cancel_requests(broker_url, limit):
    # 20 delayed jobs due together, one canceled as it waits, and a waiting request of a job due earlier. At
    # CPW_CANCEL_MEMORY=2 the memory answers for all; at 1 it drops the canceled job's request (of the two it
    # starts last), so each job due with or after it may have lost its own and is looked up on the control
    # stream before it runs: one scan serves the jobs that ask together (each read the stream itself before).
    jobs = 20
    lookups = {o: _sample("cpw_worker_cancel_lookups_total", outcome=o) for o in ("canceled", "not-canceled")}
    async with client(broker_url) as queue:
        # 20 submits and 2 cancels, a broker confirm each, must all land before `at`: they took up to 0.22 s of
        # a 1 s lead under CPU load; 3 s leaves room for a CI stall.
        at = datetime.now(UTC) + timedelta(seconds=3)
        # a hair earlier than the others, so each of them is looked up too (its request is the soonest dropped)
        canceled = await queue.submit_job(NS, TYPE, "create", request("b0"), not_before=at - timedelta(seconds=0.01))
        ids = [canceled] + [
            await queue.submit_job(NS, TYPE, "create", request(f"b{i}"), not_before=at) for i in range(1, jobs)
        ]
        await queue.cancel_job("an-earlier-job", job=_waiting_until(at.timestamp() - 0.5))
        await queue.cancel_job(canceled, reason="not this one")
        assert time.time() < at.timestamp() - 0.01  # both requests came while the jobs waited
        # due while no worker runs: the worker that starts gets them all at once
        await eventually(lambda: _queued(queue, jobs), timeout=15)
        async with running_worker(broker_url, providers.registry, cancel_memory=limit, max_concurrent_jobs=jobs) as w:
            results = [await queue.get_job_result(job_id, timeout=15) for job_id in ids]
            await eventually(lambda: len(providers.CALLS) == jobs - 1 and w.stats.canceled == 1, timeout=15)
    assert [r.status for r in results] == [JobStatus.CANCELED] + [JobStatus.SUCCEEDED] * (jobs - 1)
    assert sorted(c["name"] for c in providers.CALLS) == sorted(f"b{i}" for i in range(1, jobs))
    looked_up = {o: _sample("cpw_worker_cancel_lookups_total", outcome=o) - n for o, n in lookups.items()}
    if limit == 2:
        assert w.stats.cancel_scans == 0 and looked_up == {"canceled": 0, "not-canceled": 0}
    else:
        assert looked_up == {"canceled": 1, "not-canceled": jobs - 1}
        assert 1 <= w.stats.cancel_scans <= 2, w.stats.cancel_scans


async def _queued(queue, jobs: int) -> bool:  # noqa: ANN001
    stats = await queue.get_queue_stats()
    return stats.ready == jobs and stats.delayed == 0


async def test_a_delayed_job_due_before_the_older_cancel_requests_are_read_waits_for_them(broker_url, monkeypatch):
    monkeypatch.setattr(worker_module, "BACKFILL_WAIT", 0.2)
    async with running_worker(broker_url, providers.registry) as worker, client(broker_url) as queue:
        await asyncio.wait_for(worker.backfilled.wait(), 10)
        worker.backfilled.clear()  # as if it still read them
        job_id = await queue.submit_job(NS, TYPE, "create", request("patient"), delay=0.2)
        await eventually(lambda: worker.stats.cancel_waits >= 2, timeout=15)  # it came, went back, came again
        assert providers.CALLS == []
        read_at = time.time()
        worker.backfilled.set()
        result = await queue.get_job_result(job_id, timeout=15)
    assert result.status is JobStatus.SUCCEEDED and started("patient") >= read_at


async def test_a_job_that_arrives_early_waits_for_its_time(broker_url):
    # A job whose not_before is still ahead when it reaches a worker (clocks differ, or it was published
    # straight to the job queue) goes back into the cascade instead of starting early.
    async with running_worker(broker_url, providers.registry), client(broker_url) as queue:
        job = Job.model_validate(
            {
                "provider_namespace": NS,
                "resource_type": TYPE,
                "operation": "create",
                "request": request("early"),
                "not_before": time.time() + 1.5,
            }
        )
        await queue.submit_encoded(job.model_dump_json().encode(), job.model_copy(update={"not_before": None}))
        result = await queue.get_job_result(job.id, timeout=15)
    assert result.status is JobStatus.SUCCEEDED
    assert job.not_before <= started("early") < job.not_before + LATE


async def test_the_maximum_delay_is_accepted_and_more_is_refused(broker_url):
    limit = {"job_max_delay": 0.5}
    async with running_worker(broker_url, providers.registry, **limit), client(broker_url, **limit) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("at-limit"), delay=0.5)
        assert (await queue.get_job_result(job_id, timeout=15)).status is JobStatus.SUCCEEDED
        for bad in (0.501, -1, math.nan, math.inf, True, "5"):
            with pytest.raises(ValueError, match=r"from 0 to 0.5 \(CPW_JOB_MAX_DELAY\)"):
                await queue.submit_job(NS, TYPE, "create", request("over"), delay=bad)
        from datetime import datetime

        with pytest.raises(ValueError, match="timezone-aware"):
            await queue.submit_job(NS, TYPE, "create", request("naive"), not_before=datetime.now())
    assert [c["name"] for c in providers.CALLS] == ["at-limit"]


async def test_waiting_jobs_are_counted_in_the_queue_stats(broker_url):
    async with client(broker_url) as queue:
        for i in range(3):
            await queue.submit_job(NS, TYPE, "create", request(f"w{i}"), delay=60)
        stats = await queue.get_queue_stats()
    assert (stats.delayed, stats.ready) == (3, 0)


def early_job(name: str, ahead: float) -> Job:
    """A job whose not_before is `ahead` seconds away, to publish straight to the job queue (as if a
    worker's clock ran behind the broker's): the worker that takes it sends it back into the cascade."""
    return Job.model_validate(
        {
            "provider_namespace": NS,
            "resource_type": TYPE,
            "operation": "create",
            "request": request(name),
            "not_before": time.time() + ahead,
        }
    )


async def parked(queue) -> bool:  # noqa: ANN001
    return (await queue.get_queue_stats()).delayed == 1


async def test_an_early_job_sent_back_by_a_worker_runs_when_it_comes_back_to_that_worker(broker_url):
    # Classic queue: a lost delivery makes the job a hand-back copy with a delivery count; that copy is
    # early, so it goes into the cascade; back from it, it carries the count (so it is checked against
    # the attempts this worker settled) and must run, here: the cascade's ack settled nothing.
    async with client(broker_url) as queue:
        job = early_job("early-again", 5.0)
        await queue.submit_encoded(job.model_dump_json().encode(), job.model_copy(update={"not_before": None}))
        await lose_a_delivery(broker_url)
        async with running_worker(broker_url, providers.registry, queue_delivery_limit=2) as worker:
            await eventually(lambda: parked(queue))
            result = await queue.get_job_result(job.id, timeout=15)
        assert worker.stats.redelivered == 1
    assert result is not None and result.status is JobStatus.SUCCEEDED
    assert job.not_before <= started("early-again") < job.not_before + LATE


async def test_an_early_job_sent_back_keeps_its_delivery_count_through_the_cascade(broker_url):
    # CPW_QUEUE_DELIVERY_LIMIT=2: a lost delivery, a trip through the cascade (a deliberate hand-back:
    # not counted, not reset), then a second lost delivery: at the limit, dead-lettered, never run.
    async with client(broker_url) as queue:
        job = early_job("lost-twice", 4.0)
        await queue.submit_encoded(job.model_dump_json().encode(), job.model_copy(update={"not_before": None}))
        await lose_a_delivery(broker_url)
        async with running_worker(broker_url, providers.registry, queue_delivery_limit=2):
            await eventually(lambda: parked(queue))
        back = await lose_a_delivery(broker_url)  # out of the cascade at its not_before
        assert not back.redelivered and back.headers[DELIVERY_COUNT] == 1
        async with running_worker(broker_url, providers.registry, queue_delivery_limit=2) as worker:
            result = await queue.get_job_result(job.id, timeout=10)
            letters = await list_dead_letters(worker.broker)
    assert result is not None and result.status is JobStatus.FAILED
    assert result.error is not None and result.error.code == "DeliveryLimitExceeded"
    assert [(letter["job_id"], letter["reason"]) for letter in letters] == [(job.id, "delivery-limit")]
    assert providers.CALLS == []
