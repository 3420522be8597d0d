"""Cancel look-up benchmark: JOBS delayed jobs due together past CPW_CANCEL_MEMORY, over a control stream
holding N other cancel requests. Each job may have lost its request, so each is looked up on the stream
before it runs. One line per size:

    cancel lookups: stream=N jobs=J start_s=T scans=S lookups_s=L

`start_s` is the worker's start (it reads the stream's requests once), `scans` the control-stream reads the
look-ups cost (`stats.cancel_scans`; one per job before they were shared), `lookups_s` from the end of the
start until every job ended. Run:

    .venv/bin/python -m pytest tests/bench/bench_cancel_lookups.py -m bench -s -o addopts=""

(CPW_BENCH_LOOKUPS, default 20000,100000). It asserts that the canceled job did not run and the others did.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from controlplane_workers import JobResult, JobStatus
from controlplane_workers.ids import new_job_id
from tests.bench.bench_cancels import _publish
from tests.bench.conftest import BENCH_LINES
from tests.support import providers
from tests.support.harness import client, eventually, request, running_worker

pytestmark = [pytest.mark.bench, pytest.mark.rabbitmq, pytest.mark.timeout(1800)]
SIZES = [int(n) for n in os.environ.get("CPW_BENCH_LOOKUPS", "20000,100000").split(",")]
JOBS = 20


@pytest.mark.parametrize("size", SIZES)
async def test_delayed_jobs_due_together_past_the_cancel_memory(bench_broker, size: int) -> None:
    url = bench_broker.url_for(bench_broker.new_vhost())
    providers.CALLS.clear()
    try:
        async with client(url) as queue:
            now = time.time()
            await _publish(queue.broker, [{"type": "cancel", "job_id": new_job_id(), "at": now} for _ in range(size)])
            at = datetime.now(UTC) + timedelta(seconds=2)
            # as in tests/contract/test_delayed.py: the canceled job's request is dropped, so every job is looked up
            hair_earlier = at - timedelta(seconds=0.01)
            canceled = await queue.submit_job(
                "Test.Scripted", "things", "create", request("c"), not_before=hair_earlier
            )
            for i in range(1, JOBS):
                await queue.submit_job("Test.Scripted", "things", "create", request(f"j{i}"), not_before=at)
            due = at.timestamp() - 0.5
            earlier = JobResult(job_id="x", status=JobStatus.ACCEPTED, not_before=due, submitted_at=now)
            await queue.cancel_job("an-earlier-job", job=earlier)
            await queue.cancel_job(canceled)
            await eventually(lambda: _queued(queue), timeout=60)
            began = time.perf_counter()
            async with running_worker(url, providers.registry, cancel_memory=1, max_concurrent_jobs=JOBS) as worker:
                started = time.perf_counter()
                await eventually(lambda: len(providers.CALLS) == JOBS - 1 and worker.stats.canceled == 1, timeout=900)
                lookups_s = time.perf_counter() - started
        assert sorted(c["name"] for c in providers.CALLS) == sorted(f"j{i}" for i in range(1, JOBS))
        scans = getattr(worker.stats, "cancel_scans", "?")
        line = (
            f"cancel lookups: stream={size} jobs={JOBS} start_s={started - began:.2f} scans={scans} "
            f"lookups_s={lookups_s:.2f}"
        )
        print(line, flush=True)
        BENCH_LINES.append(line)
    finally:
        bench_broker.delete_vhost(url.rsplit("/", 1)[1])


async def _queued(queue) -> bool:  # noqa: ANN001
    stats = await queue.get_queue_stats()
    return stats.ready == JOBS and stats.delayed == 0
