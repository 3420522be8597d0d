"""The queue names a worker derives from its environment, for the tests of what watches them (KEDA's triggers)."""

from __future__ import annotations

from collections.abc import Mapping

from controlplane_workers.settings import Settings
from controlplane_workers.topology import DELAY_LEVELS, Topology


def worker_topology(env: Mapping[str, object]) -> Topology:
    """The names the worker derives from its settings (Topology.from_settings), from its env (strings only)."""
    return Topology.from_settings(Settings(**{k: v for k, v in env.items() if isinstance(v, str)}))


def retry_queues(topology: Topology) -> list[str]:
    """The delay queues a worker moves retries from (broker/retries.py)."""
    return [topology.retry_queue(n) for n in topology.retry_attempts]


def other_queues(topology: Topology) -> list[str]:
    """Every other queue of the topology: the jobs queue, the DLQ and the delay cascade."""
    return [
        topology.jobs_queue,
        topology.dead_letter_queue,
        topology.delay_entry,
        *(topology.delay_queue(k) for k in range(DELAY_LEVELS)),
    ]
