"""Dead-letter tooling: list what failed and why, send jobs round again, or discard them.

Every operation is one walk of the dead-letter queue (`Broker.dead_letters`): walks never overlap, so
a letter is seen by exactly one of them and a redrive publishes a job at most once per dead letter.
A redrive publishes the job (confirmed) before it acks the dead letter: if the process dies between
the two, the letter is still there and the job may run twice (at least once, as every delivery).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from .broker import Broker
from .broker.base import ATTEMPT, DELIVERY_COUNT, DETAIL, JOB_ID, KIND, REASON, REDRIVE, Delivery
from .events import BATCH, accepted_record

_DEAD_LETTER_HEADERS = (REASON, DETAIL, "x-cpw-original-queue", "x-cpw-dead-lettered-at", "x-cpw-dead-lettered-by")
_RESET_ON_REDRIVE = (*_DEAD_LETTER_HEADERS, ATTEMPT, DELIVERY_COUNT)


def describe(delivery: Delivery) -> dict[str, Any]:
    """One dead letter as an operator reads it (never the job's body: it may hold a tenant's secrets)."""
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
        "tenant": job.get("tenant"),
        "dead_lettered_at": delivery.headers.get("x-cpw-dead-lettered-at"),
    }


async def page_dead_letters(broker: Broker, offset: int, limit: int | None) -> tuple[list[dict[str, Any]], bool]:
    """The dead letters from position `offset` on, at most `limit`, and whether more follow. A peek:
    every letter goes back where it was."""
    async with broker.dead_letters() as walk:
        for _ in range(offset):
            if await walk.take() is None:
                return [], False
        letters: list[dict[str, Any]] = []
        while limit is None or len(letters) < limit:
            delivery = await walk.take()
            if delivery is None:
                return letters, False
            letters.append(describe(delivery))
        return letters, await walk.take() is not None


async def list_dead_letters(broker: Broker, limit: int | None = 100) -> list[dict[str, Any]]:
    return (await page_dead_letters(broker, 0, limit))[0]


async def _send_again(broker: Broker, delivery: Delivery, info: dict[str, Any]) -> None:
    """Publish a dead letter's job again with attempts and delivery count reset, confirmed; readers start it afresh.

    The Accepted record that resets readers goes first: published after the job, it could land on
    the stream after the re-run's own events and reset a job that had already started or ended (seen:
    a redriven job shown Running for good). If the job's publish then fails, readers show it Accepted
    while its dead letter stays; the operator's retry sends it."""
    if info["provider_namespace"]:  # a well-formed job
        record = accepted_record(str(info["job_id"]), time.time(), delivery.body, redrive=True)
        await broker.publish_events([(b"[" + record + b"]", {KIND: BATCH})])
    headers = {k: v for k, v in delivery.headers.items() if k not in _RESET_ON_REDRIVE}
    headers[REDRIVE] = True
    routing_key = ".".join(str(info[k] or "unknown") for k in ("provider_namespace", "resource_type", "operation"))
    await broker.publish_job(
        delivery.body,
        message_id=str(info["job_id"]),
        routing_key=routing_key,
        priority=delivery.priority,
        headers=headers,
    )


async def redrive(
    broker: Broker,
    job_ids: Iterable[str] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Publish dead-lettered jobs again with attempts reset; `None` means all. Returns how many."""
    wanted = set(job_ids) if job_ids is not None else None
    moved = 0
    async with broker.dead_letters() as walk:
        total = walk.length if wanted is None else len(wanted)
        while wanted is None or wanted:
            delivery = await walk.take()
            if delivery is None:
                break
            info = describe(delivery)
            if wanted is not None:
                if info["job_id"] not in wanted:
                    continue
                wanted.discard(info["job_id"])
            await _send_again(broker, delivery, info)
            await delivery.ack()
            moved += 1
            if progress:
                progress(moved, total)
    return moved


async def settle_one(broker: Broker, job_id: str, *, send_again: bool) -> dict[str, Any] | None:
    """Redrive (`send_again`) or discard the first dead letter of `job_id`; its description, or None
    when there is none (or another walk removed it first)."""
    async with broker.dead_letters() as walk:
        while (delivery := await walk.take()) is not None:
            info = describe(delivery)
            if info["job_id"] == job_id:
                if send_again:
                    await _send_again(broker, delivery, info)
                await delivery.ack()
                return info
    return None
