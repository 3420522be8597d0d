"""`cpw indexer` while PostgreSQL is blocked: it holds at most CPW_INDEXER_BACKLOG_MESSAGES stream messages (RabbitMQ
keeps the rest), and once PostgreSQL is back every job's final state is written, none twice."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest

from controlplane_api import projector_metrics
from controlplane_api.projector import Projector
from controlplane_api.settings import load_api_settings
from controlplane_workers.broker.base import StreamMessage
from tests.postgres.streams import script
from tests.postgres.test_projector import applied, assert_matches_oracle, publish, until

pytestmark = pytest.mark.rabbitmq
BOUND, BATCH = 40, 8


async def test_a_blocked_postgresql_holds_the_projector_at_its_backlog_bound(vhost_url, pg_url):
    messages = script(300, 2)  # ~500 stream messages: over 12 times the bound
    settings = load_api_settings(
        rabbitmq_url=vhost_url,
        postgres_url=pg_url,
        worker_id="bounded",
        indexer_backlog_messages=BOUND,
        indexer_batch_messages=BATCH,
    )
    projector = Projector(settings)
    received, held = 0, [0]  # messages delivered; after each delivery, how many were not committed

    def counting(batch: Sequence[StreamMessage], deliver=projector._received) -> None:  # noqa: SLF001
        nonlocal received
        deliver(batch)
        received += len(batch)
        held.append(received - (projector.applied + 1))  # offsets from 0: applied + 1 messages committed

    projector._received = counting  # type: ignore[method-assign]  # noqa: SLF001
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    conn = await asyncpg.connect(pg_url)
    locker = await asyncpg.connect(pg_url)
    try:
        await until(lambda: asyncio.sleep(0, projector.following and not projector.partitions.due()), every=0.02)
        block = locker.transaction()
        await block.start()
        await locker.execute("LOCK TABLE cpw_jobs IN ACCESS EXCLUSIVE MODE")
        await publish(vhost_url, messages)
        await until(lambda: asyncio.sleep(0, received >= BOUND))
        waiting = (
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'cpw-indexer bounded' AND wait_event_type = 'Lock'"
        )
        await until(lambda: conn.fetchval(waiting))  # its first batch waits for the lock
        await asyncio.sleep(0.5)  # an observation window: RabbitMQ must deliver nothing more meanwhile
        assert max(held) == BOUND and received == BOUND, (max(held), received)
        assert await applied(conn) == -1
        assert projector.backlog == BOUND == projector.status()["backlog_messages"]
        assert projector_metrics.REGISTRY.get_sample_value("cpw_projector_backlog_messages") == BOUND

        await block.rollback()  # PostgreSQL is back
        await until(lambda: asyncio.sleep(0, projector.applied == len(messages) - 1))
        assert max(held) == BOUND and received == len(messages), "each message delivered once, never over the bound"
        assert projector.backlog == 0
        await assert_matches_oracle(conn, messages)  # every job's final state, each event applied once
    finally:
        await locker.close()  # lets a projector still blocked go on, and so stop
        stop.set()
        await asyncio.wait_for(running, 10)
        await conn.close()
