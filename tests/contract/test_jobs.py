"""The job contract, run on the embedded broker and on a real RabbitMQ (fixture `broker_url`)."""

from __future__ import annotations

import pytest

from controlplane_workers import JobStatus, WorkerRegistry
from controlplane_workers.broker.base import DELIVERY_COUNT
from controlplane_workers.dlq import list_dead_letters, page_dead_letters, redrive, settle_one
from controlplane_workers.errors import DeadLettersBusy
from tests.support import providers
from tests.support.harness import client, eventually, lose_a_delivery, request, running_worker

NS, TYPE = "Test.Scripted", "things"


@pytest.fixture(autouse=True)
def _clear_calls():
    providers.CALLS.clear()
    providers.STARTED.clear()


def calls_for(name: str) -> list[dict]:
    return [c for c in providers.CALLS if c["name"] == name]


async def test_submit_runs_provider_and_result_reaches_client(broker_url):
    async with running_worker(broker_url, providers.registry), client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("a", x=1))
        result = await queue.get_job_result(job_id, timeout=10)
    assert result is not None and result.status is JobStatus.SUCCEEDED
    assert result.result["body"] == {"script": "ok", "x": 1}
    assert result.attempts == 1 and result.finished_at >= result.submitted_at


async def test_unknown_job_times_out_with_none(broker_url):
    async with client(broker_url) as queue:
        assert await queue.get_job_result("no-such-job", timeout=0.2) is None


async def test_backlog_drains_most_urgent_first(broker_url):
    async with client(broker_url) as queue:
        for i, priority in enumerate([1, 5, 9, 3, 9, 0, 7]):
            await queue.submit_job(NS, TYPE, "create", request(f"p{priority}-{i}"), priority=priority)
        async with running_worker(broker_url, providers.registry, max_concurrent_jobs=1):
            await eventually(lambda: len(providers.CALLS) == 7)
    order = [int(c["name"].split("-")[0][1:]) for c in providers.CALLS]
    assert order == sorted(order, reverse=True), order


async def test_retries_observe_backoff_then_succeed(broker_url):
    async with running_worker(broker_url, providers.registry, retry_base_delay=0.2), client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("flaky", "fail:2"))
        result = await queue.get_job_result(job_id, timeout=15)
    assert result.status is JobStatus.SUCCEEDED and result.attempts == 3
    times = [c["at"] for c in calls_for("flaky")]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[0] >= 0.19 and gaps[1] >= 0.39, gaps  # base 0.2 s, doubling, no jitter


async def test_exhausted_retries_end_in_dlq_with_reason(broker_url):
    async with running_worker(broker_url, providers.registry, max_attempts=3) as worker, client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("doomed", "error"))
        result = await queue.get_job_result(job_id, timeout=15)
        letters = await list_dead_letters(worker.broker)
    assert result.status is JobStatus.FAILED and result.attempts == 3
    assert result.error.code == "ValueError"
    assert len(calls_for("doomed")) == 3
    [letter] = letters
    assert letter["job_id"] == job_id and letter["reason"] == "attempts-exhausted" and letter["attempts"] == 3


async def test_permanent_error_fails_with_its_code_and_is_not_a_dead_letter(broker_url):
    # Issue 17, item 5: a GET of a missing resource is an ordinary failure; dead-lettering it let any tenant
    # grow the DLQ (and fire its alerts) at will.
    async with running_worker(broker_url, providers.registry) as worker, client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "get", request("missing", "permanent"))
        result = await queue.get_job_result(job_id, timeout=10)
        letters = await list_dead_letters(worker.broker)
        dead_lettered = worker.stats.dead_lettered
    assert result.status is JobStatus.FAILED and result.error.code == "InvalidRequest"
    assert result.error.message == "this request can never succeed"
    assert len(calls_for("missing")) == 1
    assert letters == [] and dead_lettered == 0


async def test_a_provider_may_ask_for_a_dead_letter(broker_url):
    async with running_worker(broker_url, providers.registry) as worker, client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("bad", "poison"))
        result = await queue.get_job_result(job_id, timeout=10)
        letters = await list_dead_letters(worker.broker)
    assert result.status is JobStatus.FAILED and result.error.code == "Poison"
    assert len(calls_for("bad")) == 1
    assert [(l["job_id"], l["reason"]) for l in letters] == [(job_id, "permanent-error")]


async def test_a_full_dlq_drops_its_oldest_dead_letter(broker_url):
    bound = {"dlq_max_length": 3}
    async with running_worker(broker_url, providers.registry, **bound) as worker, client(broker_url, **bound) as queue:
        ids = []
        for i in range(5):  # one at a time, so the DLQ's order is the submission order
            ids.append(await queue.submit_job(NS, TYPE, "create", request(f"p{i}", "poison")))
            await queue.get_job_result(ids[-1], timeout=10)
        letters = await list_dead_letters(worker.broker, None)
    assert worker.broker.dlq_bounded is True
    assert [l["job_id"] for l in letters] == ids[2:]


async def test_per_job_timeout(broker_url):
    async with running_worker(broker_url, providers.registry) as worker, client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("slow", "hang"), timeout=0.2, max_attempts=1)
        result = await queue.get_job_result(job_id, timeout=10)
        await eventually(lambda: not worker.running)  # untracked once settled, just after the event
    assert result.status is JobStatus.FAILED and result.error.code == "JobTimeout"


async def test_cancel_queued_job_is_skipped(broker_url):
    async with client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("queued"))
        await queue.cancel_job(job_id, reason="user changed their mind")
        async with running_worker(broker_url, providers.registry):
            result = await queue.get_job_result(job_id, timeout=10)
    assert result.status is JobStatus.CANCELED and result.error.message == "user changed their mind"
    assert calls_for("queued") == []


async def test_worker_reads_the_cancel_backlog_before_it_consumes(broker_url):
    # Regression (found by the drills): a starting worker consumed before it had read the cancel
    # requests already on the control stream, and ran a job canceled while it sat in the queue.
    async with client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("late"))
        for i in range(2000):  # a backlog in front of the request that matters
            await queue.cancel_job(f"other-{i}")
        await queue.cancel_job(job_id)
        async with running_worker(broker_url, providers.registry):
            result = await queue.get_job_result(job_id, timeout=10)
    assert result.status is JobStatus.CANCELED and calls_for("late") == []


async def test_cancel_running_job_stops_it(broker_url):
    async with running_worker(broker_url, providers.registry) as worker, client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("long", "hang"))
        await eventually(lambda: job_id in worker.running)
        await queue.cancel_job(job_id)
        result = await queue.get_job_result(job_id, timeout=10)
        await eventually(lambda: worker.stats.canceled == 1 and not worker.running)  # counted once acked
    assert result.status is JobStatus.CANCELED


async def test_malformed_and_unknown_jobs_dead_letter_and_worker_survives(broker_url):
    async with running_worker(broker_url, providers.registry) as worker, client(broker_url) as queue:
        await queue.broker.publish_job(
            b"not json at all", message_id="junk-1", routing_key="x.y.create", priority=5, headers={}
        )
        await queue.broker.publish_job(
            b'{"id": "j2", "provider_namespace": "A"}',
            message_id="j2",
            routing_key="x.y.create",
            priority=5,
            headers={},
        )
        unknown = await queue.submit_job("No.Such", "thing", "create", request("u"))
        ok = await queue.submit_job(NS, TYPE, "create", request("after"))
        assert (await queue.get_job_result(ok, timeout=10)).status is JobStatus.SUCCEEDED
        failed = await queue.get_job_result(unknown, timeout=10)
        await eventually(lambda: worker.stats.dead_lettered == 3)
        letters = {l["job_id"]: l for l in await list_dead_letters(worker.broker)}
    assert failed.status is JobStatus.FAILED and failed.error.code == "UnknownProvider"
    assert letters["junk-1"]["reason"] == "malformed"
    assert letters["j2"]["reason"] == "malformed" and "resource_type" in letters["j2"]["detail"]
    assert letters[unknown]["reason"] == "unknown-provider"


async def test_redrive_sends_dead_letters_round_again(broker_url):
    async with client(broker_url) as queue:
        async with running_worker(broker_url, providers.registry):
            job_id = await queue.submit_job(NS, TYPE, "create", request("again", "poison"))
            other = await queue.submit_job(NS, TYPE, "create", request("stays", "poison"))
            assert (await queue.get_job_result(job_id, timeout=10)).status is JobStatus.FAILED
            assert (await queue.get_job_result(other, timeout=10)).status is JobStatus.FAILED
        assert await redrive(queue.broker, [job_id]) == 1
        await eventually(lambda: queue.get_job_status(job_id).status is JobStatus.ACCEPTED)
        assert queue.index.redriven == 1
        async with running_worker(broker_url, providers.registry) as worker:
            assert (await queue.get_job_result(job_id, timeout=10)).attempts == 1
            await eventually(lambda: len(calls_for("again")) == 2)
            assert [l["job_id"] for l in await list_dead_letters(worker.broker)] == [other, job_id]


async def test_dead_letter_walks_keep_order_and_exclude_each_other(broker_url):
    """A peek puts every letter back in its place; a second walk (another connection) waits for the
    first, so it never sees the first's letters missing; a discard removes exactly one letter."""
    async with client(broker_url) as queue, client(broker_url) as other:
        async with running_worker(broker_url, providers.registry) as worker:
            for i in range(4):
                await queue.submit_job(NS, TYPE, "create", request(f"w{i}", "poison"))
            await eventually(lambda: worker.stats.dead_lettered == 4)
        order = [l["job_id"] for l in await list_dead_letters(queue.broker)]
        assert len(order) == 4
        letters, more = await page_dead_letters(queue.broker, 1, 2)
        assert [l["job_id"] for l in letters] == order[1:3] and more
        last, more = await page_dead_letters(queue.broker, 3, 2)
        assert [l["job_id"] for l in last] == order[3:] and not more
        assert await page_dead_letters(queue.broker, 9, 2) == ([], False)
        async with queue.broker.dead_letters() as walk:
            assert (await walk.take()) is not None
            with pytest.raises(DeadLettersBusy):
                async with other.broker.dead_letters(wait=0.3):
                    pass
        assert [l["job_id"] for l in await list_dead_letters(other.broker)] == order
        assert (await settle_one(other.broker, order[2], send_again=False))["job_id"] == order[2]
        assert await settle_one(other.broker, order[2], send_again=False) is None
        assert [l["job_id"] for l in await list_dead_letters(queue.broker)] == [order[0], order[1], order[3]]


async def test_drain_finishes_in_flight_and_requeues_the_rest(broker_url):
    async with client(broker_url) as queue:
        worker_cm = running_worker(broker_url, providers.registry, max_concurrent_jobs=4)
        worker = await worker_cm.__aenter__()
        # All four must be seen running at once: the quick ones last 1 s, so three more submits and deliveries
        # (and the poll) fit in that under load; they end within the drain's 2 s, the hanging ones never do.
        quick = [await queue.submit_job(NS, TYPE, "create", request(f"q{i}", "sleep:1")) for i in range(2)]
        stuck = [await queue.submit_job(NS, TYPE, "create", request(f"h{i}", "hang")) for i in range(2)]
        await eventually(lambda: len(worker.running) == 4)
        await worker.stop(drain_timeout=2.0)
        await worker_cm.__aexit__(None, None, None)
        for job_id in quick:
            assert (await queue.get_job_result(job_id, timeout=1)).status is JobStatus.SUCCEEDED
        # The hanging jobs were handed back, not failed: another worker picks them up.
        assert all(queue.get_job_status(j).status is not JobStatus.FAILED for j in stuck)
        providers.STARTED.clear()
        async with running_worker(broker_url, providers.registry) as second:
            await eventually(lambda: set(second.running) == set(stuck))


async def test_fleet_view_from_heartbeats(broker_url):
    async with client(broker_url) as queue:
        fleet = WorkerRegistry(missed_heartbeats=3)
        await fleet.follow(queue.broker)
        async with running_worker(broker_url, providers.registry, worker_id="w-fleet") as worker:
            await eventually(lambda: fleet.get_worker("w-fleet") is not None)
            status = fleet.get_registry_status()
            assert (
                status["total_workers"] == 1 and status["workers"][0]["capacity"] == worker.settings.max_concurrent_jobs
            )
        await eventually(lambda: fleet.get_worker("w-fleet") is None)
        await fleet.stop()


async def test_itl_shaped_provider_runs_unchanged(broker_url):
    from pydantic import BaseModel

    class ResourceResponse(BaseModel):  # the ITL SDK's providers return pydantic models
        id: str
        name: str
        properties: dict

    class ITLStyleRegistry:  # a plain registry class with the ITL SDK's method name
        def __init__(self, provider):
            self.provider = provider

        def get_provider(self, namespace, resource_type):
            return self.provider if (namespace, resource_type) == ("ITL.Compute", "vms") else None

    class ITLStyleProvider:  # a plain class, sync methods, the ITL SDK's method names
        def create_or_update_resource(self, request):
            return ResourceResponse(
                id=f"/x/{request.resource_name}", name=request.resource_name, properties={"location": request.location}
            )

        def get_resource(self, request):
            return {"id": f"/x/{request.resource_name}"}

    async with running_worker(broker_url, ITLStyleRegistry(ITLStyleProvider())), client(broker_url) as queue:
        created = await queue.submit_job("ITL.Compute", "vms", "create", request("vm1"))
        fetched = await queue.submit_job("ITL.Compute", "vms", "get", request("vm1"))
        r1 = await queue.get_job_result(created, timeout=10)
        r2 = await queue.get_job_result(fetched, timeout=10)
    assert r1.status is JobStatus.SUCCEEDED and r1.result == {
        "id": "/x/vm1",
        "name": "vm1",
        "properties": {"location": "westeurope"},
    }
    assert r2.result == {"id": "/x/vm1"}


async def test_other_readers_see_a_job_accepted_once_confirmed(broker_url):
    async with client(broker_url) as submitter, client(broker_url) as other:
        job_id = await submitter.submit_job(NS, TYPE, "delete", request("z"), priority=6, tenant="t1")
        assert submitter.get_job_status(job_id).status is JobStatus.ACCEPTED  # at once, locally
        await eventually(lambda: other.get_job_status(job_id) is not None)
        status = other.get_job_status(job_id)
    assert status.status is JobStatus.ACCEPTED and status.operation.value == "delete"
    assert (status.priority, status.tenant, status.resource_name) == (6, "t1", "z")


async def test_a_job_whose_accepted_record_never_reached_the_stream_still_belongs_to_its_tenant(broker_url):
    """The broker can go away between a job's confirm and its Accepted record; the submitter has
    answered by then, so it only logs. The worker's events carry the tenant: every reader still shows
    the job to its owner (and only to it) once it runs, and the API's count of the tenant's jobs in
    flight goes back to zero. Found by the everything-at-once drill."""
    from controlplane_api.index import ApiIndex

    index = ApiIndex(1000)
    async with client(broker_url, accepted_on_stream=False) as submitter, client(broker_url, index) as other:
        async with running_worker(broker_url, providers.registry):
            job_id = await submitter.submit_job(NS, TYPE, "create", request("no-record"), tenant="t1")
            result = await other.get_job_result(job_id, timeout=10)
    assert result is not None and result.status is JobStatus.SUCCEEDED
    assert other.index.get_for(job_id, "t1") == result
    assert other.index.get_for(job_id, "t2") is None
    assert index.active_count("t1") == 0 and index.active_count(None) == 0


async def test_lost_deliveries_count_toward_the_delivery_limit_and_hand_backs_do_not(broker_url):
    """Classic queue, CPW_QUEUE_DELIVERY_LIMIT=2: a job lost with its worker once still runs; a hand-back (drain)
    is a copy that neither counts nor looks redelivered; the second loss dead-letters the job, Failed: a job is
    delivered at most `limit` times without an outcome, as on a quorum queue (the next test)."""
    async with client(broker_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("lost", "hang"))
        first = await lose_a_delivery(broker_url)
        assert not first.redelivered and DELIVERY_COUNT not in first.headers
        worker_cm = running_worker(broker_url, providers.registry, queue_delivery_limit=2)
        worker = await worker_cm.__aenter__()
        await eventually(lambda: job_id in worker.running)  # below the limit: it runs
        assert worker.stats.redelivered == 1
        await worker.stop(drain_timeout=0.1)  # handed back
        await worker_cm.__aexit__(None, None, None)
        handed_back = await lose_a_delivery(broker_url)
        assert not handed_back.redelivered and handed_back.headers[DELIVERY_COUNT] == 1
        async with running_worker(broker_url, providers.registry, queue_delivery_limit=2) as second:
            result = await queue.get_job_result(job_id, timeout=10)
            letters = await list_dead_letters(second.broker)
    assert result is not None and result.status is JobStatus.FAILED
    assert result.error is not None and result.error.code == "DeliveryLimitExceeded"
    assert [(letter["job_id"], letter["reason"]) for letter in letters] == [(job_id, "delivery-limit")]
    assert len(calls_for("lost")) == 1  # only the run below the limit


async def test_a_quorum_queues_last_delivery_is_dead_lettered_with_its_terminal_event(vhost_url):
    """Quorum queue (the broker counts, x-delivery-count), CPW_QUEUE_DELIVERY_LIMIT=2: lost twice with its
    worker, the job's next delivery is the last the broker would make; the worker dead-letters it with the
    job's terminal event (Failed, DeliveryLimitExceeded) instead of running it a third time. The broker's own
    dead-lettering past x-delivery-limit tells no reader: the job would stay Accepted forever."""
    quorum = {"queue_type": "quorum", "queue_delivery_limit": 2}
    async with client(vhost_url, **quorum) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("lost", "hang"))
        first = await lose_a_delivery(vhost_url, **quorum)
        second = await lose_a_delivery(vhost_url, **quorum)
        assert "x-delivery-count" not in first.headers and second.headers["x-delivery-count"] == 1
        async with running_worker(vhost_url, providers.registry, **quorum) as worker:
            result = await queue.get_job_result(job_id, timeout=10)
            letters = await list_dead_letters(worker.broker)
    assert result is not None and result.status is JobStatus.FAILED
    assert result.error is not None and result.error.code == "DeliveryLimitExceeded"
    assert [(letter["job_id"], letter["reason"]) for letter in letters] == [(job_id, "delivery-limit")]
    assert calls_for("lost") == []  # the delivery at the limit did not run
