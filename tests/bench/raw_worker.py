"""The floor: a hand-written aio-pika consumer doing the same work as a worker, nothing more.

Consume with prefetch, publish a result with confirms, ack. Run: python raw_worker.py URL PREFETCH
"""

from __future__ import annotations

import asyncio
import sys

import aio_pika
import orjson
import uvloop


async def main(url: str, prefetch: int) -> None:
    connection = await aio_pika.connect_robust(url)
    consume = await connection.channel(publisher_confirms=False)
    await consume.set_qos(prefetch_count=prefetch)
    publish = await connection.channel(publisher_confirms=True)
    jobs = await consume.declare_queue("raw.jobs", durable=True)

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        request = orjson.loads(message.body)
        result = {
            "id": request["id"],
            "status": "Succeeded",
            "result": {
                "name": request["request"]["resource_name"],
                "type": "Bench.Noop/things",
                "properties": {"provisioningState": "Succeeded"},
            },
        }
        out = aio_pika.Message(orjson.dumps(result), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await publish.default_exchange.publish(out, "raw.results")
        await message.ack()

    await jobs.consume(handle)
    print("ready", flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2])))
