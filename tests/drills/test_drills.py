"""Fault and load drills on real processes: each scenario alone, then all of them at once.

Each test runs twice: `[small]` (unmarked, part of `make test`, seconds of load) and `[full]`
(marked `drill`, `make drill`, a minute of load and thousands of jobs). Same code, other sizes.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from tests.drills.harness import Load, drill, every

SIZES = [pytest.param("small", id="small"), pytest.param("full", id="full", marks=pytest.mark.drill)]


def sized(size: str, small, full):  # noqa: ANN001, ANN201
    return small if size == "small" else full


def mix(n: int) -> str:
    """The bad-provider mix: hangs (timeout path), raisers (retry then DLQ), flaky and permanent."""
    r = n % 20
    return {0: "hang", 1: "error", 2: "fail:2", 3: "permanent", 4: "error"}.get(r, "sleep:0.1")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(300)
async def test_steady_load(size, cluster):
    c = await cluster()
    rate, duration = sized(size, (40, 6), (100, 62))
    load = Load(
        c,
        rate=rate,
        count=int(rate * duration),
        duration=duration,
        script=lambda n: "sleep:0.05" if n % 4 == 0 else "ok",
    )
    account = await drill("steady", c, load, settle_s=sized(size, 40, 120))
    if size == "full":
        assert account.accepted >= 5000 and account.duration_s >= 60


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(300)
async def test_kill_9_workers(size, cluster):
    c = await cluster(workers=3)
    rate, duration, period = sized(size, (30, 8, 2.0), (60, 45, 3.0))
    load = Load(c, rate=rate, count=int(rate * duration), duration=duration, script=lambda n: "sleep:0.3")
    rng = random.Random(7)

    async def faults(load: Load) -> None:
        replacements: list[asyncio.Task] = []

        async def kill(i: int) -> None:
            await c.kill_worker(rng)
            # The replacement a Deployment would start, alongside: a start takes 3-6 s on a loaded machine, and
            # awaited here it pushed the [small] size's later kills past the end of its 8 s of load, onto idle
            # workers, so only the first kill could be counted on to land mid-job.
            replacements.append(asyncio.create_task(c.add_worker()))

        await every(period, duration - 1, kill)
        await asyncio.gather(*replacements)

    account = await drill("kill-9 workers", c, load, faults, settle_s=sized(size, 40, 120))
    assert account.redelivered > 0  # kills landed mid-job


async def _broker_faults(c, load: Load, size: str, at: float, full_restart: bool) -> None:  # noqa: ANN001
    await asyncio.sleep(at)
    c.note("broker stop")
    if full_restart:
        await asyncio.to_thread(c.server.stop)
        await asyncio.sleep(sized(size, 1, 3))  # the outage itself
        await asyncio.to_thread(c.server.start)
    else:
        await asyncio.to_thread(c.server.stop_app)
        await asyncio.sleep(sized(size, 1, 3))
        await asyncio.to_thread(c.server.start_app)
    c.note("broker up")
    load.recoveries.append(("restart", time.time()))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(400)
async def test_broker_restart_and_closed_connections(size, cluster):
    c = await cluster(workers=2)
    rate, duration = sized(size, (25, 14), (60, 60))
    load = Load(c, rate=rate, count=int(rate * duration), duration=duration, script=lambda n: "sleep:0.2")

    async def faults(load: Load) -> None:
        await _broker_faults(c, load, size, sized(size, 2, 10), full_restart=size == "full")
        await asyncio.sleep(sized(size, 3, 10))
        c.note("close_all_connections")
        await asyncio.to_thread(c.server.close_all_connections)
        load.recoveries.append(("close_all", time.time()))
        if size == "full":
            await asyncio.sleep(10)
            await _broker_faults(c, load, size, 0, full_restart=False)

    await drill("broker restart + close_all_connections", c, load, faults, settle_s=sized(size, 60, 180))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(600)  # full size: the HTTP load generator runs well below 60/s on a slow machine
async def test_api_killed_and_restarted(size, cluster):
    c = await cluster(workers=2)
    rate, duration, period = sized(size, (30, 8, 3.0), (60, 45, 10.0))
    load = Load(c, rate=rate, count=int(rate * duration), duration=duration, script=lambda n: "sleep:0.1")

    async def faults(load: Load) -> None:
        async def bounce(i: int) -> None:
            await c.kill_api(i % 2)
            await c.restart_api(i % 2)

        await every(period, duration - 2, bounce)

    await drill("api kill -9 + restart", c, load, faults, settle_s=sized(size, 40, 120))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(300)
async def test_sigterm_scale_in_with_long_jobs(size, cluster):
    c = await cluster(workers=3, CPW_DRAIN_TIMEOUT=2, CPW_JOB_TIMEOUT=10)
    rate, duration, period = sized(size, (15, 9, 3.0), (30, 45, 6.0))
    # 1.5 s jobs finish inside the drain window; 4 s ones outlast it and are handed back
    load = Load(
        c,
        rate=rate,
        count=int(rate * duration),
        duration=duration,
        script=lambda n: "sleep:4" if n % 5 == 0 else "sleep:1.5",
    )
    exits: list[int] = []

    async def faults(load: Load) -> None:
        async def scale(i: int) -> None:
            victim = c.live_workers()[0]
            await c.add_worker()
            exits.append(await c.sigterm_worker(victim))

        await every(period, duration - 1, scale)

    await drill("SIGTERM scale-in", c, load, faults, settle_s=sized(size, 40, 120))
    assert exits and all(code == 0 for code in exits), exits


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(300)
async def test_hanging_and_raising_providers(size, cluster):
    c = await cluster(workers=2, CPW_JOB_TIMEOUT=1)
    rate, duration = sized(size, (30, 6), (60, 45))
    load = Load(c, rate=rate, count=int(rate * duration), duration=duration, script=mix)
    account = await drill("hanging + raising providers", c, load, settle_s=sized(size, 40, 120))
    assert account.wrong_outcome == 0
    assert account.by_state["Failed"] > 0 and account.by_state["Succeeded"] > 0


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(900)
async def test_everything_at_once(size, cluster):
    c = await cluster(workers=3, CPW_JOB_TIMEOUT=2, CPW_DRAIN_TIMEOUT=2)
    rate, duration = sized(size, (25, 16), (50, 75))
    load = Load(
        c,
        rate=rate,
        count=int(rate * duration),
        duration=duration,
        script=lambda n: mix(n) if n % 3 == 0 else "sleep:0.3",
    )
    rng = random.Random(11)

    async def faults(load: Load) -> None:
        async def kills(i: int) -> None:
            await c.kill_worker(rng)
            await c.add_worker()

        async def api(i: int) -> None:
            await c.kill_api(i % 2)
            await c.restart_api(i % 2)

        async def scale(i: int) -> None:
            live = c.live_workers()
            if len(live) > 1:
                await c.add_worker()
                await c.sigterm_worker(live[0])

        async def broker() -> None:
            await _broker_faults(c, load, size, sized(size, 6, 20), full_restart=size == "full")
            await asyncio.sleep(sized(size, 3, 15))
            c.note("close_all_connections")
            await asyncio.to_thread(c.server.close_all_connections)
            load.recoveries.append(("close_all", time.time()))

        await asyncio.gather(
            every(sized(size, 3.0, 4.0), duration - 2, kills),
            every(sized(size, 5.0, 15.0), duration - 2, api, start=sized(size, 4.0, 8.0)),
            every(sized(size, 7.0, 12.0), duration - 2, scale, start=sized(size, 2.0, 5.0)),
            broker(),
        )

    await drill("everything at once", c, load, faults, settle_s=sized(size, 60, 180))
