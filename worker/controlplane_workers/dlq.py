"""Dead-letter tooling: list what failed and why, and move jobs back to the queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from .broker import Broker
from .broker.base import ATTEMPT, DETAIL, JOB_ID, KIND, REASON, REDRIVE, Delivery
from .events import BATCH, accepted_record

_DEAD_LETTER_HEADERS = (REASON, DETAIL, "x-cpw-original-queue", "x-cpw-dead-lettered-at", "x-cpw-dead-lettered-by")


def describe(delivery: Delivery) -> dict[str, Any]:
    """One dead letter as an operator reads it."""
    try:
        job = orjson.loads(delivery.body)
    except orjson.JSONDecodeError:
        job = None
    job = job if isinstance(job, dict) else {}
    return {
        "job_id": delivery.message_id or delivery.headers.get(JOB_ID) or job.get("id"),
        "reason": delivery.headers.get(REASON, "rejected"),
        "detail": delivery.headers.get(DETAIL, ""),
        "attempts": delivery.headers.get(ATTEMPT, 1),
        "provider_namespace": job.get("provider_namespace"),
        "resource_type": job.get("resource_type"),
        "operation": job.get("operation"),
        "dead_lettered_at": delivery.headers.get("x-cpw-dead-lettered-at"),
    }


async def list_dead_letters(broker: Broker, limit: int | None = 100) -> list[dict[str, Any]]:
    """Peek: every message fetched is put back."""
    deliveries = await broker.take_dead_letters(limit)
    try:
        return [describe(d) for d in deliveries]
    finally:
        for delivery in deliveries:
            await delivery.reject(requeue=True)


async def redrive(
    broker: Broker,
    job_ids: Iterable[str] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Publish dead-lettered jobs again with attempts reset; `None` means all. Returns how many."""
    wanted = set(job_ids) if job_ids is not None else None
    deliveries = await broker.take_dead_letters(None)
    moved = 0
    try:
        chosen = [d for d in deliveries if wanted is None or describe(d)["job_id"] in wanted]
        for delivery in chosen:
            info = describe(delivery)
            headers = {k: v for k, v in delivery.headers.items() if k not in _DEAD_LETTER_HEADERS and k != ATTEMPT}
            headers[REDRIVE] = True
            routing_key = ".".join(
                str(info[k] or "unknown") for k in ("provider_namespace", "resource_type", "operation")
            )
            await broker.publish_job(
                delivery.body,
                message_id=str(info["job_id"]),
                routing_key=routing_key,
                priority=delivery.priority,
                headers=headers,
            )
            if info["provider_namespace"]:  # a well-formed job: readers start it afresh
                record = accepted_record(str(info["job_id"]), time.time(), delivery.body, redrive=True)
                await broker.publish_events([(b"[" + record + b"]", {KIND: BATCH})])
            await delivery.ack()
            moved += 1
            if progress:
                progress(moved, len(chosen))
    finally:
        for delivery in deliveries:
            await delivery.reject(requeue=True)  # no-op for those already acked
    return moved
