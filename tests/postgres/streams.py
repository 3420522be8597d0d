"""Scripted results streams for the projector's tests, and the status index as their oracle."""

from __future__ import annotations

import random
from typing import Any

import orjson

from controlplane_workers.broker.base import KIND, StreamMessage
from controlplane_workers.events import BATCH, accepted_record
from controlplane_workers.ids import new_job_id
from controlplane_workers.status import StatusIndex


def job_events(job_id: str, tenant: str, at: float, rng: random.Random) -> list[bytes]:
    """A job's records as workers and the API write them; some end twice or hear a late Running."""
    job = {
        "id": job_id,
        "provider_namespace": "Test.Scripted",
        "resource_type": "things",
        "operation": "create",
        "request": {"resource_name": f"r-{job_id[-6:]}"},
        "priority": 5,
        "submitted_at": at,
        "tenant": tenant,
    }
    end = rng.choice(["succeeded", "failed"])
    records = [
        accepted_record(job_id, at, orjson.dumps(job)),
        orjson.dumps({"job_id": job_id, "type": "running", "at": at + 1, "attempt": 1, "worker_id": "w1"}),
        orjson.dumps({"job_id": job_id, "type": end, "at": at + 2, "attempt": 1, "result": {"n": 1}}),
    ]
    if rng.random() < 0.2:  # a worker died after publishing its result: the job ends again
        records.append(orjson.dumps({"job_id": job_id, "type": "succeeded", "at": at + 3, "attempt": 2}))
    if rng.random() < 0.2:  # a Running that arrives after the end
        records.append(orjson.dumps({"job_id": job_id, "type": "running", "at": at + 4, "attempt": 3}))
    return records


def script(jobs: int, per_message: int, seed: int = 7) -> list[tuple[bytes, dict[str, Any]]]:
    """Stream messages (batches of `per_message` events), each job's records in order, jobs interleaved."""
    rng = random.Random(seed)
    queues = [job_events(new_job_id(), rng.choice(["tenant-a", "tenant-b"]), 1e9 + i, rng) for i in range(jobs)]
    events: list[bytes] = []
    while queues:
        q = rng.choice(queues)
        events.append(q.pop(0))
        if not q:
            queues.remove(q)
    return [
        (b"[" + b",".join(events[i : i + per_message]) + b"]", {KIND: BATCH})
        for i in range(0, len(events), per_message)
    ]


def oracle(messages: list[tuple[bytes, dict[str, Any]]]) -> StatusIndex:
    index = StatusIndex()
    index.apply_batch([StreamMessage(body, headers, offset) for offset, (body, headers) in enumerate(messages)])
    return index
