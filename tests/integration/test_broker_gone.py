"""A broker that is gone must not hold a stopping process: every cancel and close gives up within
CPW_PUBLISH_TIMEOUT (at once when the connection is known lost), so `cpw api`, `cpw indexer` and a role of a
team's own exit 0 on SIGTERM whether their node was killed or froze mid-connection (as a node cut off by the
network: the connection stays open, nothing answers). The worker's own test is in test_worker_processes.py.

One node of the module's own: the tests freeze it, and the last one kills it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from controlplane_workers.broker.rabbitmq import RabbitMQBroker
from controlplane_workers.topology import Topology
from tests.api.support import RG, A, Proc, V, start_api, wait_ready
from tests.conftest import BrokerEndpoint
from tests.postgres.test_projector import start_indexer
from tests.support.harness import eventually
from tests.support.postgres import pg_url, postgres  # noqa: F401  (fixtures)
from tests.support.processes import CpwProcess, worker_env
from tests.support.rabbitmq import RabbitMQServer, own_node

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(90)]

TIMEOUT = 1.0  # CPW_PUBLISH_TIMEOUT of the processes and brokers here: each cancel or close waits at most this


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitMQServer]:
    yield from own_node()


@pytest.fixture
def endpoint(node: RabbitMQServer) -> Iterator[BrokerEndpoint]:
    """The module's node, running and answering (a test before may have killed or frozen it)."""
    if node.process is None:
        node.start()
    yield BrokerEndpoint(node.amqp_url, node.management_url, node)
    thaw(node)


@pytest.fixture
def url(endpoint: BrokerEndpoint, node: RabbitMQServer) -> Iterator[str]:
    vhost = endpoint.new_vhost()
    yield endpoint.url_for(vhost)
    thaw(node)
    if node.process is not None:
        endpoint.delete_vhost(vhost)


def freeze(node: RabbitMQServer) -> None:
    """SIGSTOP the node: its connections stay open and nothing on them answers."""
    assert node.process is not None
    os.killpg(node.process.pid, signal.SIGSTOP)


def thaw(node: RabbitMQServer) -> None:
    if node.process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, signal.SIGCONT)


async def exits_on_sigterm(process: subprocess.Popen, within: float) -> float:
    """SIGTERM, then the seconds it took to exit 0 (a TimeoutExpired past `within` fails the test)."""
    started = time.monotonic()
    process.terminate()
    code = await asyncio.to_thread(process.wait, within)
    assert code == 0
    return time.monotonic() - started


async def timed(step, limit: float) -> float:  # noqa: ANN001
    """Seconds `step` took; it must neither raise nor outlast `limit` (the old code waited forever)."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        await step
    return time.monotonic() - started


async def test_cancel_and_close_give_up_within_the_publish_timeout_when_the_broker_stops_answering(endpoint, url):
    broker = RabbitMQBroker(url, Topology(), publish_timeout=TIMEOUT)
    await broker.connect()

    async def nothing(_) -> None:  # noqa: ANN001
        return None

    consumer = await broker.consume_jobs(nothing, 4)
    heartbeats = await broker.subscribe_heartbeats(lambda _: None)
    follower = await broker.follow(broker.topology.results_stream, lambda _: None, "next")
    assert endpoint.server is not None
    freeze(endpoint.server)
    try:
        took = [
            await timed(consumer.cancel(), TIMEOUT + 3),
            await timed(heartbeats.cancel(), TIMEOUT + 3),
            await timed(follower.cancel(), TIMEOUT + 3),
            await timed(broker.publish_heartbeat(b"{}"), TIMEOUT + 3),
        ]
        closed = await timed(broker.close(timeout=TIMEOUT / 4), TIMEOUT + 3)  # a caller's shorter budget holds too
    finally:
        thaw(endpoint.server)
        await broker.close()
    assert all(t < TIMEOUT + 1 for t in took) and closed < TIMEOUT / 4 + 1, (took, closed)
    print(f"frozen broker: cancels/heartbeat {[round(t, 2) for t in took]}s, close {closed:.2f}s")


async def test_a_consumer_cancelled_while_its_connection_is_lost_returns_at_once_and_stays_cancelled(endpoint):
    """No wait for a connection that is gone (the consumer went with it), and none restored when it is back."""
    vhost = endpoint.new_vhost()
    broker = RabbitMQBroker(endpoint.url_for(vhost), Topology(), publish_timeout=30.0)
    await broker.connect()
    try:
        delivered: list[str | None] = []

        async def handler(delivery) -> None:  # noqa: ANN001
            delivered.append(delivery.message_id)

        consumer = await broker.consume_jobs(handler, 4)
        # The broker application stops: connections closed, reconnects refused, durable queues kept. (Deleting
        # the vhost instead also cancels every consumer first: test_regressions_connect.py.)
        assert endpoint.server is not None
        await asyncio.to_thread(endpoint.server.stop_app)
        await eventually(lambda: not broker.connected.is_set())
        took = await timed(consumer.cancel(), 5)
        assert took < 1, took
        await asyncio.to_thread(endpoint.server.start_app)  # back: the robust connection reconnects
        await asyncio.wait_for(broker.connected.wait(), 30)
        assert broker.connection is not None
        channel = await broker.connection.channel(publisher_confirms=False)
        jobs = await channel.declare_queue(broker.topology.jobs_queue, passive=True)
        assert jobs.declaration_result.consumer_count == 0
        print(f"consumer cancelled in {took:.3f}s with its connection gone; not restored after the reconnect")
    finally:
        await broker.close()
        endpoint.delete_vhost(vhost)


async def test_a_windowed_follower_over_its_window_gives_up_its_cancel_within_the_publish_timeout(endpoint, url):
    """Over its window, a follower cancels its consumer: on a connection that stopped answering that cancel waited
    for good (held paused until a heartbeat ended the connection). It gives up within the publish timeout and leaves
    the consumer to the channel's reopen: once the broker answers again the reader gets every message once, never
    more than its window. (Consuming again at once instead raced the reopen's consumer, 2 runs of 6: one of the two
    was left unknown, and the follower stayed paused for good.)"""
    broker = RabbitMQBroker(url, Topology(), publish_timeout=TIMEOUT)
    await broker.connect()
    seen: list[int] = []
    try:
        window = 4
        follower = await broker.follow(
            broker.topology.results_stream, lambda b: seen.extend(m.offset for m in b), "first", window=window
        )
        await broker.publish_events([(b"[]", {}) for _ in range(2)])
        await eventually(lambda: len(seen) == 2)
        assert endpoint.server is not None and follower.tag is not None  # type: ignore[attr-defined]
        freeze(endpoint.server)
        try:
            follower.paused = True  # type: ignore[attr-defined]  # as a delivery over the window does, consumer live
            took = await timed(follower._pause(), TIMEOUT + 3)  # type: ignore[attr-defined]  # noqa: SLF001
        finally:
            thaw(endpoint.server)
        await broker.publish_events([(b"[]", {}) for _ in range(10)])
        while len(seen) < 12:
            follower.release(seen[-1])
            released = seen[-1]
            await eventually(lambda: len(seen) > released + 1 or len(seen) == 12, 30)
            assert len(seen) - (released + 1) <= window
        assert seen == list(range(12))
    finally:
        await broker.close()
    assert took < TIMEOUT + 1, took
    print(f"frozen broker: a windowed follower's pause gave up its cancel in {took:.2f}s")


async def test_a_windowed_follower_released_while_its_connection_is_lost_goes_on_after_the_reconnect(endpoint, url):
    """Paused over its window, the reader releases while the connection is lost: the consume again waits for the
    reconnect, and it consumed on the new channel beside the reopen's resubscribe; the next pause cancelled one of
    the two, and the follower stayed paused for good with the other unknown (a projector whose PostgreSQL caught up
    during a broker restart stopped indexing). One consumer after the reconnect, every message once."""
    broker = RabbitMQBroker(url, Topology(), publish_timeout=TIMEOUT)
    await broker.connect()
    seen: list[int] = []
    window = 4

    async def read_to(end: int) -> None:
        while len(seen) < end:  # release what was handed over, as the reader's writes commit
            released = seen[-1]
            follower.release(released)
            await eventually(lambda: len(seen) > released + 1 or len(seen) == end, 30)
            assert len(seen) - (released + 1) <= window

    try:
        stream = broker.topology.results_stream
        follower = await broker.follow(stream, lambda b: seen.extend(m.offset for m in b), "first", window=window)
        await broker.publish_events([(b"[]", {}) for _ in range(12)])
        await eventually(lambda: len(seen) == window)
        if not follower.paused:  # type: ignore[attr-defined]  # a chunk ended at the window: paused as by one over it
            follower.paused = True  # type: ignore[attr-defined]
            await follower._pause()  # type: ignore[attr-defined]  # noqa: SLF001
        await eventually(lambda: follower.tag is None)  # type: ignore[attr-defined]  # its consumer cancelled
        assert endpoint.server is not None
        await asyncio.to_thread(endpoint.server.stop_app)
        await eventually(lambda: not broker.connected.is_set())
        follower.release(window - 1)  # room again, with the connection lost
        await asyncio.to_thread(endpoint.server.start_app)
        await asyncio.wait_for(broker.connected.wait(), 30)
        await read_to(12)
        await broker.publish_events([(b"[]", {}) for _ in range(4)])
        await read_to(16)
        assert seen == list(range(16))
    finally:
        await broker.close()


async def test_cpw_indexer_exits_0_on_sigterm_with_its_broker_frozen(endpoint, url, pg_url, tmp_path):  # noqa: F811
    indexer = start_indexer(url, pg_url, tmp_path, "frozen", CPW_PUBLISH_TIMEOUT=TIMEOUT)
    try:
        await wait_ready(indexer, f"{indexer.ops_url}/health/ready")
        assert endpoint.server is not None
        freeze(endpoint.server)
        took = await exits_on_sigterm(indexer.proc, 15)
        print(f"cpw indexer: exit 0 {took:.1f}s after SIGTERM, broker frozen")
    finally:
        kill(indexer)


async def test_a_role_of_its_own_exits_0_on_sigterm_with_its_broker_frozen(endpoint, url, tmp_path):
    env = worker_env(url, CPW_WORKER_ROLE="tests.support.roles:FleetWatcher", CPW_PUBLISH_TIMEOUT=str(TIMEOUT))
    role = CpwProcess("worker", env, tmp_path / "role.log").start()
    try:
        await asyncio.to_thread(role.wait_ready)
        assert endpoint.server is not None and role.process is not None
        freeze(endpoint.server)
        took = await exits_on_sigterm(role.process, 15)
        print(f"role FleetWatcher: exit 0 {took:.1f}s after SIGTERM, broker frozen")
    finally:
        if role.process is not None and role.process.poll() is None:
            role.kill()


async def test_cpw_api_exits_0_on_sigterm_with_its_broker_killed_and_answers_what_is_in_flight(endpoint, url, tmp_path):
    api = await start_api(url, tmp_path, CPW_PUBLISH_TIMEOUT=TIMEOUT)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            accepted = await http.put(f"{api.url}{RG}/before", params=V, headers=A, json={})
            assert accepted.status_code in (200, 201, 202), accepted.text
            job_id = accepted.json()["jobId"]
            # A long-poll in flight across the kill and the SIGTERM: no worker here, so it ends with its wait.
            poll = asyncio.ensure_future(
                http.get(f"{api.url}/operations/{job_id}", params={**V, "wait": "2"}, headers=A)
            )
            assert endpoint.server is not None
            endpoint.server.kill()
            refused = await http.put(f"{api.url}{RG}/during", params=V, headers=A, json={})
            assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
            took = await exits_on_sigterm(api.proc, 15)
            answered = await poll
        assert answered.status_code == 200 and answered.json()["status"] == "Accepted", answered.text
        print(f"cpw api: exit 0 {took:.1f}s after SIGTERM (a 2 s long-poll in flight), broker killed")
    finally:
        kill(api)


def kill(proc: Proc) -> None:
    """A process left running by a failed test: SIGKILL, not another SIGTERM it would not answer."""
    if proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait(10)
