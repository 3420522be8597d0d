"""Real `cpw worker` processes on a real RabbitMQ: counts, crashes, drains, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time

import pytest

from controlplane_workers import JobStatus
from controlplane_workers.dlq import list_dead_letters
from tests.support.harness import client, eventually, request
from tests.support.processes import CpwProcess, cpw_executable, worker_env
from tests.support.rabbitmq import RabbitMQServer

NS, TYPE = "Test.Scripted", "things"


@pytest.fixture
def workers(tmp_path):
    started: list[CpwProcess] = []

    def start(url: str, name: str, **env: str) -> CpwProcess:
        process = CpwProcess("worker", worker_env(url, CPW_WORKER_ID=name, **env), tmp_path / f"{name}.log").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


async def _results(queue, job_ids, timeout=60.0):
    return await asyncio.gather(*(queue.get_job_result(j, timeout) for j in job_ids))


@pytest.mark.timeout(180)
async def test_thousand_jobs_two_workers_each_ends_once(vhost_url, workers):
    w1, w2 = (
        workers(vhost_url, "w1", CPW_MAX_CONCURRENT_JOBS="16"),
        workers(vhost_url, "w2", CPW_MAX_CONCURRENT_JOBS="16"),
    )
    await asyncio.to_thread(w1.wait_ready)
    await asyncio.to_thread(w2.wait_ready)
    async with client(vhost_url) as queue:
        scripts = ["ok"] * 900 + ["fail:1"] * 50 + ["poison"] * 50
        job_ids = await asyncio.gather(
            *(queue.submit_job(NS, TYPE, "create", request(f"j{i}", s)) for i, s in enumerate(scripts))
        )
        results = await _results(queue, job_ids)
        assert all(r is not None for r in results), "a job never ended"
        by_status = {s: sum(1 for r in results if r.status is s) for s in JobStatus}
        assert by_status[JobStatus.SUCCEEDED] == 950 and by_status[JobStatus.FAILED] == 50
        assert queue.index.duplicates == 0
        # A worker counts a job after its ack, a moment after its outcome reaches the client: wait for the last
        # counts (a count past 1000 still fails below), then check the rest of them.
        await eventually(lambda: w1.status()["jobs_processed"] + w2.status()["jobs_processed"] >= 1000)
        s1, s2 = w1.status(), w2.status()
        assert s1["jobs_processed"] + s2["jobs_processed"] == 1000
        assert s1["jobs_failed"] + s2["jobs_failed"] == 50
        assert s1["jobs_retried"] + s2["jobs_retried"] == 50
        assert s1["jobs_processed"] > 0 and s2["jobs_processed"] > 0  # both competed
        import httpx

        exposition = httpx.get(w1.ops_url + "/metrics").text
        assert f"worker_jobs_processed_total {float(s1['jobs_processed'])}" in exposition
        assert 'cpw_worker_dead_lettered_total{reason="permanent-error"}' in exposition


@pytest.mark.timeout(120)
async def test_kill_9_mid_job_redelivers_and_completes(vhost_url, workers):
    doomed = workers(vhost_url, "doomed")
    await asyncio.to_thread(doomed.wait_ready)
    async with client(vhost_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("k", "sleep:2"))
        await eventually(lambda: doomed.status()["in_flight"] == 1)
        doomed.kill()
        survivor = workers(vhost_url, "survivor")
        result = await queue.get_job_result(job_id, timeout=60)
        assert result.status is JobStatus.SUCCEEDED and result.worker_id == "survivor"
        assert survivor.status()["redelivered"] == 1


@pytest.mark.timeout(120)
async def test_sigterm_finishes_in_flight_then_exits_zero(vhost_url, workers):
    worker = workers(vhost_url, "graceful", CPW_DRAIN_TIMEOUT="20")
    await asyncio.to_thread(worker.wait_ready)
    async with client(vhost_url) as queue:
        # 6 s jobs: the three submits, the poll, SIGTERM and the readiness polls to a process under CPU load all
        # come out of the jobs' time (up to 0.6 s after SIGTERM alone, measured), with seconds to spare.
        job_ids = [await queue.submit_job(NS, TYPE, "create", request(f"t{i}", "sleep:6")) for i in range(3)]
        await eventually(lambda: worker.status()["in_flight"] == 3)
        worker.signal(signal.SIGTERM)
        # the jobs have seconds left: readiness must already say 503 while they finish
        await eventually(lambda: _ready_code(worker) == 503, timeout=4)
        status = worker.status()
        assert (status["status"], status["in_flight"]) == ("draining", 3), status
        assert await asyncio.to_thread(worker.wait, 30) == 0
        results = await _results(queue, job_ids, timeout=5)
        assert [r.status for r in results] == [JobStatus.SUCCEEDED] * 3


def _ready_code(worker: CpwProcess) -> int:
    import httpx

    try:
        return httpx.get(worker.ops_url + "/health/ready", timeout=1).status_code
    except httpx.HTTPError:
        return 0  # already gone counts as not ready


@pytest.mark.timeout(240)
async def test_broker_restart_mid_stream_loses_nothing(tmp_path, workers):
    server = RabbitMQServer().start()
    try:
        url = server.amqp_url
        worker = workers(url, "steady", CPW_MAX_CONCURRENT_JOBS="8")
        await asyncio.to_thread(worker.wait_ready)
        async with client(url) as queue:
            before = [await queue.submit_job(NS, TYPE, "create", request(f"b{i}", "sleep:0.2")) for i in range(100)]
            await eventually(lambda: worker.status()["jobs_processed"] >= 5)
            await asyncio.to_thread(server.restart)
            after = []
            for i in range(100):  # submissions are accepted again once the client reconnected
                while True:
                    try:
                        after.append(await queue.submit_job(NS, TYPE, "create", request(f"a{i}")))
                        break
                    except Exception:
                        await asyncio.sleep(0.2)
            results = await _results(queue, before + after, timeout=120)
            missing = [j for j, r in zip(before + after, results) if r is None]
            assert not missing, f"{len(missing)} accepted jobs never ended"
            assert all(r.status is JobStatus.SUCCEEDED for r in results)
            assert queue.index.duplicates >= 0
            await eventually(lambda: worker.status()["ready"], timeout=30)
    finally:
        server.cleanup()


@pytest.mark.timeout(30)
def test_bad_setting_exits_2_with_one_line():
    result = subprocess.run(
        [cpw_executable(), "worker"],
        env={"CPW_MAX_CONCURRENT_JOBS": "many", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cpw: configuration error: CPW_MAX_CONCURRENT_JOBS: Input should be a valid integer, unable to parse string as an integer"
    ]
    assert sys.executable


@pytest.mark.timeout(60)
async def test_unroutable_job_is_refused_not_dropped(vhost_url):
    from controlplane_workers import UnroutableJob

    async with client(vhost_url) as queue:
        broker = queue.broker
        jobs = await broker.publisher.get_queue(queue.topology.jobs_queue)
        await jobs.unbind(queue.topology.exchange, "#")
        with pytest.raises(UnroutableJob, match="no queue bound"):
            await queue.submit_job(NS, TYPE, "create", request("nowhere"))
        assert len(queue.index) == 0  # no Accepted record for a job nobody will run


@pytest.mark.timeout(120)
async def test_quorum_queue_runs_jobs_and_caps_poison_deliveries(rabbitmq, workers):
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    try:
        worker = workers(url, "quorum", CPW_QUEUE_TYPE="quorum")
        await asyncio.to_thread(worker.wait_ready)
        async with client(url, queue_type="quorum") as queue:
            job_ids = [await queue.submit_job(NS, TYPE, "create", request(f"q{i}")) for i in range(20)]
            results = await _results(queue, job_ids, timeout=30)
        assert [r.status for r in results] == [JobStatus.SUCCEEDED] * 20
        info = rabbitmq.queue(vhost, "provider.jobs")
        assert info["type"] == "quorum" and info["arguments"]["x-delivery-limit"] == 20
    finally:
        rabbitmq.delete_vhost(vhost)


@pytest.mark.timeout(180)
async def test_all_connections_closed_under_load_loses_nothing(rabbitmq, workers, tmp_path):
    if rabbitmq.server is None:
        pytest.skip("needs the suite's own broker node (CPW_TEST_RABBITMQ_URL points elsewhere)")
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    try:
        worker = workers(url, "bounce", CPW_MAX_CONCURRENT_JOBS="8")
        await asyncio.to_thread(worker.wait_ready)
        async with client(url) as queue:
            job_ids = [await queue.submit_job(NS, TYPE, "create", request(f"c{i}", "sleep:0.1")) for i in range(200)]
            await eventually(lambda: worker.status()["jobs_processed"] >= 10)
            await asyncio.to_thread(rabbitmq.server.close_all_connections)
            results = await _results(queue, job_ids, timeout=90)
            assert all(r is not None and r.status is JobStatus.SUCCEEDED for r in results)
            await eventually(lambda: worker.status()["ready"], timeout=30)
            assert worker.status()["jobs_processed"] + worker.status()["ack_lost"] >= 200
    finally:
        rabbitmq.delete_vhost(vhost)


@pytest.mark.timeout(120)
async def test_dlq_cli_lists_reasons_and_redrives(vhost_url, workers):
    worker = workers(vhost_url, "dlq")
    await asyncio.to_thread(worker.wait_ready)
    async with client(vhost_url) as queue:
        bad = [await queue.submit_job(NS, TYPE, "create", request(f"d{i}", "poison")) for i in range(3)]
        await _results(queue, bad, timeout=30)
        env = {"CPW_RABBITMQ_URL": vhost_url, "PATH": "/usr/bin:/bin"}
        listed = await asyncio.to_thread(
            subprocess.run,
            [cpw_executable(), "dlq", "list", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        import json

        letters = json.loads(listed.stdout)
        assert sorted(l["job_id"] for l in letters) == sorted(bad)
        assert {l["reason"] for l in letters} == {"permanent-error"}
        redriven = await asyncio.to_thread(
            subprocess.run,
            [cpw_executable(), "dlq", "redrive", bad[0]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert redriven.returncode == 0 and "redriven: 1" in redriven.stdout, redriven.stderr
        await eventually(lambda: worker.status()["jobs_dead_lettered"] == 4)  # it ran again and failed again
        again = await asyncio.to_thread(
            subprocess.run,
            [cpw_executable(), "dlq", "list", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert len(json.loads(again.stdout)) == 3


@contextlib.asynccontextmanager
async def supervised(start, url: str, slots: int, **env: str):  # noqa: ANN001
    """Keep `slots` workers running: a new one starts whenever one exits, as a Deployment restarts them."""
    stopping = asyncio.Event()
    started: list[CpwProcess] = []

    async def keep(slot: int) -> None:
        while not stopping.is_set():
            process = start(url, f"w{slot}-{len(started)}", **env)
            started.append(process)
            await asyncio.to_thread(process.wait, None)

    slots_kept = [asyncio.create_task(keep(slot)) for slot in range(slots)]
    try:
        yield started
    finally:
        stopping.set()
        for process in started:
            process.stop()
        await asyncio.gather(*slots_kept)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_job_that_kills_its_worker_is_dead_lettered_past_the_delivery_limit(
    vhost_url, workers, tmp_path, queue_type
):
    """CPW_QUEUE_DELIVERY_LIMIT=2, on either queue type: a job runs at most twice; when both runs killed their
    worker, the next delivery dead-letters it with its terminal event (Failed, DeliveryLimitExceeded), on a
    quorum queue too (the broker's own dead-lettering past x-delivery-limit would leave it Running). At the
    limit (a crash, then a run that succeeds) the job still ends."""
    limit = 2
    async with client(vhost_url, queue_type=queue_type, queue_delivery_limit=limit) as queue:
        at_limit = await queue.submit_job(
            NS, TYPE, "create", request("at-limit", f"crash:{limit - 1}", runs=str(tmp_path / "at-limit.runs"))
        )
        poison = await queue.submit_job(
            NS, TYPE, "create", request("poison", "crash:1000", runs=str(tmp_path / "poison.runs"))
        )
        async with supervised(
            workers,
            vhost_url,
            2,
            CPW_QUEUE_DELIVERY_LIMIT=str(limit),
            CPW_MAX_CONCURRENT_JOBS="1",
            CPW_QUEUE_TYPE=queue_type,
        ) as started:
            succeeded, failed = await _results(queue, [at_limit, poison], timeout=240)
            letters = await list_dead_letters(queue.broker)
        assert succeeded is not None and succeeded.status is JobStatus.SUCCEEDED
        assert failed is not None and failed.status is JobStatus.FAILED
        assert failed.error is not None and failed.error.code == "DeliveryLimitExceeded"
        assert [(letter["job_id"], letter["reason"]) for letter in letters] == [(poison, "delivery-limit")]
        # each job ran `limit` times, no more: every run of the poison killed its worker
        assert (tmp_path / "at-limit.runs").read_text() == (tmp_path / "poison.runs").read_text() == str(limit)
        assert len(started) >= 2 * limit - 1 + 2  # three crashes, each followed by a new worker


@pytest.mark.timeout(180)
async def test_jobs_handed_back_at_shutdown_do_not_count_as_lost_deliveries(vhost_url, workers, tmp_path):
    """SIGTERM with a drain timeout shorter than the job hands it back three times; with a delivery limit of 1
    the job still runs to the end: a hand-back is a copy, not a redelivery, and is not counted."""
    runs = tmp_path / "runs"
    async with client(vhost_url) as queue:
        job_id = await queue.submit_job(NS, TYPE, "create", request("long", "sleep:4", runs=str(runs)))
        for i in range(4):
            worker = workers(vhost_url, f"drained{i}", CPW_QUEUE_DELIVERY_LIMIT="1", CPW_DRAIN_TIMEOUT="0.2")
            await asyncio.to_thread(worker.wait_ready)
            await eventually(lambda: worker.status()["in_flight"] == 1, timeout=30)
            assert worker.status()["redelivered"] == 0  # a reject with requeue would have flagged it
            if i < 3:
                worker.signal(signal.SIGTERM)
                assert await asyncio.to_thread(worker.wait, 30) == 0
        result = await queue.get_job_result(job_id, timeout=30)
    assert result is not None and result.status is JobStatus.SUCCEEDED and result.worker_id == "drained3"
    assert runs.read_text() == "4"


async def test_a_worker_whose_broker_is_gone_still_exits_promptly_on_sigterm(rabbitmq, workers):
    """Its vhost deleted under it (the broker gone for good, as for a node down): SIGTERM must end the process
    well within a pod's grace period. It used to wait forever on the consumer's cancel and was SIGKILLed."""
    vhost = rabbitmq.new_vhost()
    worker = workers(rabbitmq.url_for(vhost), "orphan")
    await asyncio.to_thread(worker.wait_ready)
    rabbitmq.delete_vhost(vhost)
    assert worker.process is not None
    started = time.monotonic()
    worker.process.terminate()
    code = await asyncio.to_thread(worker.process.wait, 25)  # TimeoutExpired fails the test
    took = time.monotonic() - started
    assert code == 0, worker.tail()
    print(f"exited {code} {took:.1f}s after SIGTERM with its broker gone")
