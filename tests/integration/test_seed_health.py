"""The worker's ops port answers what the seed promises: `curl http://worker:8001/health` ->
`{"status": "healthy", "worker_id": "worker-1"}`, `/status` with jobs_processed, jobs_failed and uptime_seconds,
`/metrics` with worker_jobs_processed. A real `cpw worker` named by the seed's WORKER_ID, on a real RabbitMQ; and
one whose broker cannot be reached answers 503 unhealthy on the same route."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from controlplane_workers import JobQueue, JobStatus
from tests.api.support import Proc, _env, spawn, start_worker
from tests.support.rabbitmq import free_port

pytestmark = pytest.mark.timeout(90)


@pytest.mark.rabbitmq
async def test_health_status_and_metrics_answer_as_the_seed_shows(vhost_url, tmp_path):
    worker = await start_worker(vhost_url, tmp_path, WORKER_ID="worker-1")
    try:
        async with JobQueue(vhost_url) as queue:
            for script, status in (("ok", JobStatus.SUCCEEDED), ("permanent", JobStatus.FAILED)):
                job_id = await queue.submit_job("Test.Scripted", "things", "create", {"body": {"script": script}})
                result = await queue.get_job_result(job_id, 30)
                assert result is not None and result.status is status
        async with httpx.AsyncClient(base_url=worker.ops_url, timeout=5) as http:
            health = await http.get("/health")
            assert health.status_code == 200 and health.json() == {"status": "healthy", "worker_id": "worker-1"}
            status = (await http.get("/status")).json()
            assert (status["worker_id"], status["jobs_processed"], status["jobs_failed"]) == ("worker-1", 2, 1)
            assert status["uptime_seconds"] > 0
            metrics = (await http.get("/metrics")).text
        assert "\nworker_jobs_processed_total 2.0\n" in metrics and "\nworker_jobs_failed_total 1.0\n" in metrics
        assert "\nworker_uptime_seconds " in metrics
    finally:
        worker.stop()


async def test_health_answers_503_unhealthy_while_the_broker_is_unreachable(tmp_path):
    ops_port = free_port()
    nobody = f"amqp://guest:guest@127.0.0.1:{free_port()}/"  # a port nothing listens on
    env = _env(
        nobody,
        {"CPW_HEALTH_PORT": ops_port, "WORKER_ID": "worker-1", "CPW_PROVIDERS": "tests.support.providers:registry"},
    )
    log = tmp_path / "worker.log"
    worker = Proc(spawn(["worker"], env, log), log, 0, ops_port)
    try:
        async with httpx.AsyncClient(base_url=worker.ops_url, timeout=2) as http:
            health = None
            for _ in range(200):  # the ops port opens before the broker is tried, and stays open while it retries
                try:
                    health = await http.get("/health")
                    break
                except httpx.TransportError:
                    assert worker.proc.poll() is None, worker.output()
                    await asyncio.sleep(0.05)
            assert health is not None, worker.output()
            assert health.status_code == 503 and health.json() == {"status": "unhealthy", "worker_id": "worker-1"}
            assert (await http.get("/health/live")).status_code == 200  # alive: a restart would not help
    finally:
        assert worker.stop() == 0, worker.output()
