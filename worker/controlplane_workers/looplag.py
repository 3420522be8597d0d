"""Event-loop lag: how late this process's event loop runs a timer that was due.

Everything a worker or an API process does (a request, a job's handler, a broker confirm, a
heartbeat) waits for the loop, so when the loop is late everything is late by as much. Rising lag
with a core to spare means bursts of work hold the loop; lag with the core saturated means the
process needs another replica. docs/api.md ("Performance") shows it at work: bunched arrivals made
the API's loop stall over 5 ms ~9 times a second and tripled its submit latency.

A timer every `INTERVAL` measures the overshoot with `perf_counter` (uvloop's own clock has a
resolution of 1 ms). At 50 wake-ups a second it costs well under 0.1% of a core. Like Node's
`monitorEventLoopDelay`, it samples: a stall shorter than the interval may fall between two timers.
The histogram lives in prometheus-client's default registry, which every process's ops port serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from prometheus_client import Histogram

INTERVAL = 0.02
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

LAG = Histogram(
    "cpw_event_loop_lag_seconds",
    f"How late the process's event loop ran a timer, sampled every {INTERVAL * 1000:g} ms.",
    buckets=BUCKETS,
)


async def measure(histogram: Histogram = LAG, interval: float = INTERVAL) -> None:
    """Observe the loop's lag into `histogram` until cancelled."""
    clock = time.perf_counter
    while True:
        due = clock() + interval
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, clock() - due))


@contextlib.asynccontextmanager
async def watching(histogram: Histogram = LAG, interval: float = INTERVAL) -> AsyncIterator[None]:
    """Measure the running loop's lag for the duration of the block (a process's main)."""
    task = asyncio.create_task(measure(histogram, interval), name="cpw-event-loop-lag")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
