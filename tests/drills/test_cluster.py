"""A broker node lost under load, on a three-node cluster behind haproxy (tests/support/cluster.py).

SIGKILL of the node that leads `provider.jobs` (a quorum queue) and the streams, started again a few
seconds later (a pod restart), while a submitter (the SDK's JobQueue) offers jobs at a steady rate to
a real `cpw worker`, both on haproxy's one URL. Every accepted job must reach exactly one terminal
state, and the worker's log must stay a few lines per restart: one per state change, not one per
retry (issue 22: 356 tracebacks in 2 s).

`[small]` runs in `make test`; `[full]` (marker `drill`) in `make drill`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controlplane_workers import JobStatus
from controlplane_workers.errors import BrokerUnavailable
from tests.drills.test_drills import SIZES, sized
from tests.support.cluster import RabbitMQCluster, own_cluster
from tests.support.harness import client, request
from tests.support.processes import CpwProcess, worker_env

NS, TYPE = "Test.Scripted", "things"
QUORUM = {"CPW_QUEUE_TYPE": "quorum"}
CLUSTER_RESULTS: list[str] = []


@pytest.fixture(scope="module")
def broker_cluster() -> Iterator[RabbitMQCluster]:
    yield from own_cluster()


@dataclass
class Outcomes:
    """When each accepted job was accepted and first seen terminal, by the submitter."""

    accepted: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, JobStatus] = field(default_factory=dict)
    not_accepted: int = 0

    def first_after(self, times: dict[str, float], moment: float) -> float:
        later = [t for t in times.values() if t >= moment]
        return min(later) - moment if later else float("inf")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _lines_since(path: Path, offset: int) -> list[str]:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.timeout(240)
async def test_the_node_leading_the_jobs_queue_and_streams_killed_and_restarted(size, broker_cluster, tmp_path):
    rate, count, kill_at, down_s = sized(size, (50, 300, 1.5, 4.0), (100, 5000, 10.0, 10.0))
    url = broker_cluster.amqp_url
    worker_log = tmp_path / "worker.log"
    outcomes = Outcomes()
    sdk_log = _Records()  # what the submitter (the SDK, in this process) logged about the broker
    worker = CpwProcess(
        "worker", worker_env(url, CPW_WORKER_ID="w1", CPW_MAX_CONCURRENT_JOBS="32", **QUORUM), worker_log
    )
    try:
        logging.getLogger("controlplane_workers.broker").addHandler(sdk_log)
        worker.start()
        await asyncio.to_thread(worker.wait_ready, 60)
        jobs_leader = broker_cluster.leader("provider.jobs")
        stream_leaders = {s: broker_cluster.leader(s).nodename for s in ("provider.results", "provider.control")}
        async with client(url, queue_type="quorum", publish_timeout=5.0) as queue:
            waiters: set[asyncio.Task[None]] = set()

            async def wait_terminal(job_id: str) -> None:
                result = await queue.get_job_result(job_id, timeout=None)
                assert result is not None
                outcomes.finished[job_id] = time.time()
                outcomes.statuses[job_id] = result.status

            async def submit(n: int) -> None:
                try:
                    job_id = await queue.submit_job(NS, TYPE, "create", request(f"c{n}", "ok"))
                except BrokerUnavailable:
                    outcomes.not_accepted += 1  # not accepted: nothing was promised
                    return
                outcomes.accepted[job_id] = time.time()
                waiter = asyncio.create_task(wait_terminal(job_id))
                waiters.add(waiter)

            async def load() -> None:
                started = time.monotonic()
                submissions = []
                for n in range(count):
                    await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
                    submissions.append(asyncio.create_task(submit(n)))
                await asyncio.gather(*submissions)

            loading = asyncio.create_task(load())
            await asyncio.sleep(kill_at)  # the scenario: the node dies while the load runs
            log_offset = _log_size(worker_log)
            killed_at = time.time()
            await asyncio.to_thread(broker_cluster.kill, jobs_leader)
            await asyncio.sleep(down_s)  # the scenario: a pod restart takes a few seconds
            await asyncio.to_thread(broker_cluster.restart, jobs_leader)
            back_at = time.time()
            await loading
            settle = sized(size, 60, 180)
            await asyncio.wait_for(asyncio.gather(*waiters), settle)
            restart_lines = _lines_since(worker_log, log_offset)
            # A second reader from the start of the stream must agree on every outcome (another replica).
            async with client(url, queue_type="quorum") as replica:
                disagree = 0
                for job_id, status in outcomes.statuses.items():
                    other = await replica.get_job_result(job_id, timeout=30)
                    disagree += other is None or other.status is not status
            ignored = queue.index.duplicates
        accepted = len(outcomes.accepted)
        terminal = len(outcomes.finished)
        lost = accepted - terminal
        recovery = max(
            outcomes.first_after(outcomes.accepted, killed_at),
            outcomes.first_after(outcomes.finished, killed_at),
        )
        tracebacks = sum("Traceback" in line for line in restart_lines)
        line = (
            f"cluster-drill: accepted={accepted} terminal={terminal} lost={lost} duplicates={disagree} "
            f"max_recovery_s={recovery:.1f} log_lines_per_restart={len(restart_lines)}"
        )
        detail = (
            f"  [{size}] not_accepted={outcomes.not_accepted} ignored_dup_events={ignored} tracebacks={tracebacks} "
            f"first_accepted_after_kill_s={outcomes.first_after(outcomes.accepted, killed_at):.1f} "
            f"first_finished_after_kill_s={outcomes.first_after(outcomes.finished, killed_at):.1f} "
            f"submitter_log_lines={len(sdk_log.records)} "
            f"node_back_after_s={back_at - killed_at:.1f} killed={jobs_leader.nodename} streams_led_by={stream_leaders}"
        )
        CLUSTER_RESULTS.append(line)
        print(f"\n{line}\n{detail}")
        assert accepted > 0 and lost == 0 and disagree == 0, detail
        assert all(s is JobStatus.SUCCEEDED for s in outcomes.statuses.values())
        assert len(restart_lines) < 30, "\n".join(restart_lines[:40])
        assert tracebacks <= 1, "\n".join(restart_lines[:40])
    finally:
        logging.getLogger("controlplane_workers.broker").removeHandler(sdk_log)
        worker.stop()
        with contextlib.suppress(Exception):  # a node a failed drill left down
            for node in broker_cluster.nodes:
                if node.process is None:
                    broker_cluster.restart(node)
