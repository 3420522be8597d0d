"""The broker's consumer timeout exceeded by long jobs, under load, on a node of its own.

RabbitMQ closes the channel of a consumer that holds a delivery longer than `consumer_timeout`
and requeues everything that channel held. The node here has a 2 s timeout, checked every 0.5 s
(`channel_tick_interval`; the default checks once a minute), and some jobs run 4 s: the worker
must survive, and every job must still end exactly once for clients.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.drills.harness import Load, drill
from tests.drills.test_drills import SIZES, sized
from tests.support.rabbitmq import RabbitMQServer, own_node

CONSUMER_TIMEOUT_MS = 2000


@pytest.fixture(scope="module")
def drill_node() -> Iterator[RabbitMQServer]:
    for server in own_node(consumer_timeout_ms=CONSUMER_TIMEOUT_MS):
        server.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 500).")
        yield server


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(300)
async def test_consumer_timeout_exceeded_by_long_jobs(size, cluster):
    c = await cluster(workers=2, CPW_JOB_TIMEOUT=30)
    rate, duration = sized(size, (10, 8), (30, 45))
    # one job in ten outlasts the consumer timeout twice over
    load = Load(
        c,
        rate=rate,
        count=int(rate * duration),
        duration=duration,
        script=lambda n: "sleep:4" if n % 10 == 0 else "sleep:0.2",
    )
    account = await drill("consumer timeout exceeded", c, load, settle_s=sized(size, 60, 120))
    assert account.redelivered > 0  # the broker did take deliveries back
    async with httpx.AsyncClient(timeout=5) as http:
        for worker in c.workers:
            assert worker.proc.poll() is None, worker.output()[-2000:]  # the worker survived
            assert (await http.get(f"{worker.ops_url}/health/ready")).status_code == 200
