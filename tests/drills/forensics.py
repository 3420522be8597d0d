"""What a drill prints about a job it lost: enough to explain the loss without running it again.

For each lost job: the client's record, each API replica's answer, every event the results stream
holds for it (read raw, not through the index), where its message sits now (job queue, retry
queues, DLQ) and the process log lines that name it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import aio_pika
import httpx
import orjson

from controlplane_workers.topology import Topology
from tests.api.support import A

if TYPE_CHECKING:
    from tests.drills.harness import Cluster, Load


async def stream_events(url: str, stream: str, job_ids: set[str], quiet_s: float = 2.0) -> dict[str, list[dict]]:
    """Every event on `stream` for `job_ids`, with the stream offset, read from the start."""
    found: dict[str, list[dict]] = {j: [] for j in job_ids}
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue(stream, passive=True)
        last = time.monotonic()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal last
            last = time.monotonic()
            offset = (message.headers or {}).get("x-stream-offset")
            try:
                data = orjson.loads(message.body)
            except orjson.JSONDecodeError:
                data = []
            for item in data if isinstance(data, list) else [data]:
                if isinstance(item, dict):
                    job_id = item.get("job_id") or (item.get("job") or {}).get("id")
                    if job_id in found:
                        found[job_id].append({"offset": offset, **{k: v for k, v in item.items() if k != "job"}})
            await message.ack()

        await queue.consume(on_message, arguments={"x-stream-offset": "first"})
        while time.monotonic() - last < quiet_s:  # the end of a stream is "nothing more arrives"
            await asyncio.sleep(0.2)
    finally:
        await connection.close()
    return found


async def where_messages_are(url: str, topology: Topology, job_ids: set[str]) -> dict[str, Any]:
    """Message counts of the job, retry and dead-letter queues, and which lost jobs the DLQ holds."""
    out: dict[str, Any] = {}
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        names = [topology.jobs_queue, topology.dead_letter_queue] + [
            topology.retry_queue(a) for a in topology.retry_attempts
        ]
        for name in names:
            queue = await channel.declare_queue(name, passive=True)
            result = queue.declaration_result
            out[name] = {"ready": result.message_count, "consumers": result.consumer_count}
        dlq = await channel.declare_queue(topology.dead_letter_queue, passive=True)
        held = []
        while True:
            message = await dlq.get(no_ack=False, fail=False)
            if message is None:
                break
            if message.message_id in job_ids:
                held.append(message.message_id)
        out["dlq_holds_lost"] = held
        await channel.close()  # unacked gets go back to the DLQ
    finally:
        await connection.close()
    return out


async def explain(cluster: Cluster, load: Load, job_ids: list[str]) -> str:
    ids = set(job_ids)
    lines = [f"--- forensics for {len(ids)} lost job(s)"]
    records = {r.job_id: r for r in load.records if r.job_id in ids}
    async with httpx.AsyncClient(timeout=5.0) as http:
        for job_id in job_ids:
            r = records.get(job_id)
            if r is not None:
                lines.append(
                    f"{job_id}: script={r.script} n={r.n} submit_attempts={r.attempts} ids={r.ids} "
                    f"accepted_at=+{(r.accepted_at or 0) - load.started_epoch:.2f}s replayed={r.replayed}"
                )
            for api in cluster.apis:
                with contextlib.suppress(httpx.HTTPError):
                    answer = await http.get(f"{api.url}/jobs/{job_id}", headers=A)
                    lines.append(f"  api :{api.port} -> {answer.status_code} {answer.text[:300]}")
    try:
        topology = Topology()
        events = await stream_events(cluster.url, topology.results_stream, ids)
        for job_id, found in events.items():
            lines.append(f"  stream events of {job_id}:")
            for event in found:
                at = event.get("at")
                when = f"+{at - load.started_epoch:.2f}s" if isinstance(at, (int, float)) else "?"
                lines.append(f"    {when} {orjson.dumps(event).decode()[:300]}")
        lines.append(f"  queues: {await where_messages_are(cluster.url, topology, ids)}")
    except Exception as exc:  # forensics must not hide the drill's own failure
        lines.append(f"  (could not read the broker: {exc!r})")
    for proc in [*cluster.apis, *cluster.workers]:
        for line in proc.output().splitlines():
            if any(j in line for j in ids):
                lines.append(f"  {proc.log.name}: {line[:300]}")
    for when, what in cluster.events:
        lines.append(f"  {when - load.started_epoch:6.1f}s {what}")
    return "\n".join(lines)
