"""Job core benchmark: JobQueue -> one `cpw worker` process -> result, next to raw aio-pika.

`make bench` runs it against a local RabbitMQ and prints the numbers; it asserts nothing about
speed (a noisy machine must not fail a build), only that every job completed.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import httpx
import orjson
import pytest

from controlplane_workers import JobQueue
from tests.bench.noop import arm_request
from tests.support.harness import fast_settings
from tests.support.processes import ROOT, CpwProcess

pytestmark = [pytest.mark.bench, pytest.mark.timeout(900)]

N = int(os.environ.get("CPW_BENCH_JOBS", "5000"))
ROUNDS = int(os.environ.get("CPW_BENCH_ROUNDS", "3"))
CONCURRENCY = 32
WINDOW = 512  # submissions in flight at once


async def _submit_all(submit, n: int) -> None:
    semaphore = asyncio.Semaphore(WINDOW)

    async def one(i: int) -> None:
        async with semaphore:
            await submit(i)

    await asyncio.gather(*(one(i) for i in range(n)))


async def project_round(url: str, tmp: Path, accepted_on_stream: bool = True, readback: float = 0.0) -> float:
    """`readback`: CPW_RESULTS_READBACK for the worker and the submitter (a cluster's default is 5)."""
    worker = CpwProcess(
        "worker",
        {
            "CPW_RABBITMQ_URL": url,
            "CPW_PROVIDERS": "tests.bench.noop:registry",
            "CPW_MAX_CONCURRENT_JOBS": str(CONCURRENCY),
            "CPW_LOG_LEVEL": "WARNING",
            "CPW_ACCEPTED_ON_STREAM": str(accepted_on_stream).lower(),
            "CPW_RESULTS_READBACK": str(readback),
        },
        tmp / "worker.log",
    ).start()
    await asyncio.to_thread(worker.wait_ready)
    settings = fast_settings(url, accepted_on_stream=accepted_on_stream, results_readback=readback)
    queue = JobQueue(url, settings=settings, replay_from="next")
    await queue.connect()
    try:
        ids: list[str] = []
        started = time.perf_counter()

        async def submit(i: int) -> None:
            ids.append(await queue.submit_job("Bench.Noop", "things", "create", arm_request(i)))

        await _submit_all(submit, N)
        results = await asyncio.gather(*(queue.get_job_result(j, 120) for j in ids))
        elapsed = time.perf_counter() - started
        assert all(r is not None and r.status.value == "Succeeded" for r in results)
        return N / elapsed
    finally:
        await queue.disconnect()
        worker.stop()


async def raw_round(url: str) -> float:
    process = subprocess.Popen(  # noqa: ASYNC220 - setup, not measured
        [sys.executable, str(Path(__file__).with_name("raw_worker.py")), url, str(CONCURRENCY)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    connection = await aio_pika.connect_robust(url)
    try:
        assert process.stdout is not None
        assert (await asyncio.to_thread(process.stdout.readline)).strip() == "ready"
        channel = await connection.channel(publisher_confirms=True)
        consume = await connection.channel(publisher_confirms=False)
        await consume.set_qos(prefetch_count=2000)
        results = await consume.declare_queue("raw.results", durable=True)
        await channel.declare_queue("raw.jobs", durable=True)
        done = asyncio.Event()
        seen = 0

        async def on_result(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            orjson.loads(message.body)
            seen += 1
            await message.ack()
            if seen == N:
                done.set()

        await results.consume(on_result)
        started = time.perf_counter()

        async def submit(i: int) -> None:
            job = {"id": f"{i}", "request": arm_request(i), "operation": "create"}
            message = aio_pika.Message(orjson.dumps(job), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, "raw.jobs")

        await _submit_all(submit, N)
        await asyncio.wait_for(done.wait(), 120)
        return N / (time.perf_counter() - started)
    finally:
        await connection.close()
        process.terminate()
        process.wait(10)


def idle_worker_numbers(url: str, tmp: Path) -> tuple[float, float]:
    """Seconds from exec to ready, and RSS when idle (MB), of a fresh `cpw worker`."""
    starts, rss = [], []
    for i in range(3):
        worker = CpwProcess(
            "worker",
            {"CPW_RABBITMQ_URL": url, "CPW_PROVIDERS": "tests.bench.noop:registry", "CPW_LOG_LEVEL": "WARNING"},
            tmp / f"idle{i}.log",
        ).start()
        try:
            starts.append(worker.wait_ready())
            httpx.get(worker.ops_url + "/metrics")  # touch the ops port like a scraper would
            time.sleep(1.0)  # let the idle process settle before reading its RSS
            rss.append(worker.rss_bytes() / 1e6)
        finally:
            worker.stop()
    return statistics.median(starts), statistics.median(rss)


def test_core_throughput_against_raw_aio_pika(rabbitmq, tmp_path):
    systems = {
        "raw aio-pika": lambda url: raw_round(url),
        "JobQueue+cpw worker": lambda url: project_round(url, tmp_path),
        "  without Accepted copy": lambda url: project_round(url, tmp_path, accepted_on_stream=False),
        "  with readback": lambda url: project_round(url, tmp_path, readback=5.0),
    }
    runs: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(ROUNDS):  # alternate the systems, so drift on the machine hits all alike
        for name, run in systems.items():
            vhost = rabbitmq.new_vhost()
            try:
                runs[name].append(asyncio.run(run(rabbitmq.url_for(vhost))))
            finally:
                rabbitmq.delete_vhost(vhost)
    start_s, rss_mb = idle_worker_numbers(rabbitmq.amqp_url, tmp_path)
    median = {name: statistics.median(values) for name, values in runs.items()}
    raw = median["raw aio-pika"]
    print()
    print(f"core bench: {N} jobs x {ROUNDS} rounds, one worker process, {CONCURRENCY} jobs in flight")
    for name, values in runs.items():
        print(
            f"  {name:26s} jobs/s median {median[name]:7.0f}  "
            f"(min {min(values):.0f}, max {max(values):.0f})  ratio to raw {median[name] / raw:.2f}"
        )
    print(f"  worker start->ready {start_s:.2f}s   idle RSS {rss_mb:.1f} MB")
    project, lean = median["JobQueue+cpw worker"], median["  without Accepted copy"]
    readback = median["  with readback"]
    print(
        f"bench-core: project_jobs_per_s={project:.0f} project_no_accepted_copy_jobs_per_s={lean:.0f} "
        f"raw_aio_pika_jobs_per_s={raw:.0f} ratio_raw={project / raw:.2f} "
        f"ratio_raw_no_copy={lean / raw:.2f} readback_jobs_per_s={readback:.0f} "
        f"readback_ratio={readback / project:.2f} "
        f"start_to_ready_s={start_s:.2f} idle_rss_mb={rss_mb:.1f}"
    )
