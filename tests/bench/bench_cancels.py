"""Cancel-request start-up benchmark: a control stream holding N cancel requests older than the cancel
window (a day's worth at the default CPW_JOB_MAX_DELAY), a few of them for delayed jobs still waiting,
plus RECENT requests inside the window; then one worker starts. One line per size:

    cancels: old=N waiting=W recent=R start_s=T backfill_s=B kept=K rss_mib=M

`start_s` is `ProviderWorker.start()` (the worker consumes jobs after it), `backfill_s` until the worker
also knows every waiting job's request (delayed jobs wait for that, others do not), `kept` the requests it
holds, `rss_mib` the process's resident growth over the start. Run:

    .venv/bin/python -m pytest tests/bench/bench_cancels.py -m bench -s -o addopts=""

(CPW_BENCH_CANCELS, default 100000,300000). It asserts only that every waiting job's request is known.
"""

from __future__ import annotations

import asyncio
import os
import time

import orjson
import pytest

from controlplane_workers import ProviderWorker
from controlplane_workers.broker import open_broker
from controlplane_workers.ids import new_job_id
from controlplane_workers.providers import as_lookup
from controlplane_workers.topology import Topology
from tests.bench.conftest import BENCH_LINES
from tests.support import providers
from tests.support.harness import fast_settings
from tests.support.proc import rss_bytes

pytestmark = [pytest.mark.bench, pytest.mark.rabbitmq, pytest.mark.timeout(1800)]
SIZES = [int(n) for n in os.environ.get("CPW_BENCH_CANCELS", "100000,300000").split(",")]
WAITING_EVERY = 100  # one request in a hundred is for a delayed job still waiting
RECENT = 1000
WINDOW = 2.0  # the cancel window of the worker that starts (seconds)
SENDING = 1000  # requests in flight at once


async def _publish(broker, requests: list[dict]) -> None:  # noqa: ANN001
    for i in range(0, len(requests), SENDING):
        await asyncio.gather(
            *(broker.publish_control(orjson.dumps(r), {}) for r in requests[i : i + SENDING]),
        )


@pytest.mark.parametrize("size", SIZES)
async def test_worker_start_over_a_day_of_cancel_requests(bench_broker, size: int) -> None:
    url = bench_broker.url_for(bench_broker.new_vhost())
    settings = fast_settings(url, cancel_window=WINDOW)
    broker = open_broker(url, Topology.from_settings(settings))
    await broker.connect()
    now = time.time()
    old = [{"type": "cancel", "job_id": new_job_id(), "reason": "canceled by request", "at": now} for _ in range(size)]
    waiting = old[::WAITING_EVERY]
    for r in waiting:
        r["not_before"] = now + 3600
    await _publish(broker, old)
    await asyncio.sleep(WINDOW + 1.5)  # the old ones fall out of the window (stream timestamps are per second)
    await _publish(broker, [{"type": "cancel", "job_id": new_job_id(), "at": time.time()} for _ in range(RECENT)])
    await broker.close()

    worker = ProviderWorker(settings, as_lookup(providers.registry))
    rss = rss_bytes(os.getpid())
    began = time.perf_counter()
    await worker.start()
    start_s = time.perf_counter() - began
    try:
        backfilled = getattr(worker, "backfilled", None)
        if backfilled is not None:
            await backfilled.wait()
        else:  # before the backfill existed: the start read everything it ever would
            await _known(worker, waiting)
        backfill_s = time.perf_counter() - began
        await _known(worker, waiting)
        line = (
            f"cancels: old={size} waiting={len(waiting)} recent={RECENT} start_s={start_s:.2f} "
            f"backfill_s={backfill_s:.2f} kept={len(worker.cancel_requests)} "
            f"rss_mib={(rss_bytes(os.getpid()) - rss) / 2**20:.1f}"
        )
        print(line, flush=True)
        BENCH_LINES.append(line)
    finally:
        await worker.stop(drain_timeout=1.0)
        bench_broker.delete_vhost(url.rsplit("/", 1)[1])


async def _known(worker: ProviderWorker, waiting: list[dict]) -> None:
    deadline = time.monotonic() + 600
    while not all(r["job_id"] in worker.cancel_requests for r in waiting):
        assert time.monotonic() < deadline, "waiting jobs' cancel requests not read"
        await asyncio.sleep(0.05)  # polls a counter: nothing to await before the backfill existed
