"""Peer benchmark (issue 8): this project via the SDK and via HTTP, raw aio-pika, Celery, Taskiq,
side by side on one RabbitMQ in alternating rounds. `make bench` runs the full one (marker `bench`);
`make test` runs the smoke test: the same harness, a few hundred jobs per system, asserting only that
every system completed every job.

Environment: CPW_BENCH_JOBS (5000), CPW_BENCH_ROUNDS (3), CPW_BENCH_RATES (200,500,1000),
CPW_BENCH_LATENCY_SECONDS (5), CPW_BENCH_SCALING (1,2,4), CPW_BENCH_SYSTEMS (project,http,raw,celery,taskiq).
Outputs: build/bench/results.json, build/bench/chart.png, build/bench/table.md, the tables in
docs/benchmarks.md (between the bench:results markers) and, last, the `bench:` line.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from tests.bench import conftest as bench_conftest
from tests.bench.harness import Config, run_sync, write_outputs
from tests.bench.systems import CLASSES, SYSTEMS, available
from tests.support.processes import ROOT


@pytest.mark.bench
@pytest.mark.timeout(5400, method="thread")
def test_peer_benchmark(bench_broker, tmp_path):
    config = Config.from_env()
    print(
        f"\npeer bench: {config.jobs} jobs x {config.rounds} rounds, systems {', '.join(config.systems)}; "
        f"latency at {config.rates} jobs/s for {config.latency_seconds} s; scaling {config.scaling}"
    )
    results = run_sync(bench_broker, tmp_path, config, say=lambda s: print(s, flush=True))
    line = write_outputs(results, ROOT / "build" / "bench", ROOT / "docs" / "benchmarks.md")
    print((ROOT / "build" / "bench" / "table.md").read_text())
    print(line)
    bench_conftest.BENCH_LINES.append(line)
    for key, rows in results.throughput.items():
        assert len(rows) == config.rounds, key


SMOKE_JOBS = 300


# The asyncio limits below end a stuck run; pytest-timeout's signal cannot reach into the event loop
# (the loop logs an exception raised in a callback), so its thread method is the last resort.
@pytest.mark.timeout(180, method="thread")
@pytest.mark.parametrize("key", list(SYSTEMS))
def test_smoke_every_system_completes_every_job(key, rabbitmq, tmp_path):
    """Each system through the harness: closed loop, open loop, submit-only, all jobs complete."""
    reason = available(key)
    if reason:
        pytest.skip(reason)

    async def smoke() -> None:
        vhost = rabbitmq.new_vhost()
        system = CLASSES[key](rabbitmq, vhost, tmp_path)
        try:
            await system.start(1)
            closed = await system.closed(SMOKE_JOBS, 64, limit=60)  # asserts every job completed
            assert closed.jobs == SMOKE_JOBS
            open_ = await system.open_loop(200, 0.5, limit=30)
            assert len(open_.latencies) == open_.jobs == 100
        finally:
            await system.stop()
            rabbitmq.delete_vhost(vhost)
        vhost = rabbitmq.new_vhost()
        system = CLASSES[key](rabbitmq, vhost, tmp_path)
        try:
            await system.start(0)
            assert await asyncio.wait_for(system.submit_only(50), 30) > 0
        finally:
            await system.stop()
            rabbitmq.delete_vhost(vhost)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(smoke())
