"""Taskiq with taskiq-aio-pika for the benchmark: the same RabbitMQ, a worker of 32 async tasks.

Worker: taskiq worker tests.bench.taskiq_app:broker --workers 1 --max-async-tasks 32
--max-prefetch 0 --ack-type when_saved (CPW_BENCH_URL is the broker URL, vhost included).

taskiq-aio-pika publishes persistent messages on a channel with publisher confirms (aio-pika's
default) and declares durable queues; its default queue type is quorum, set to classic here so every
system uses the same queue type. The broker's prefetch (`qos`) is 32, as for every other system.
taskiq runs on uvloop when it is installed (it is).

Taskiq ships no RabbitMQ result backend (its own are Redis, NATS, PostgreSQL...), so completion is
observed through `RabbitResultBackend` below, the equivalent of Celery's rpc:// backend: the worker
publishes each result (persistent, confirmed) to one durable queue, which the submitter consumes;
results are pushed to the waiting submitter, not polled. With `--ack-type when_saved` a job is acked
after its result was confirmed, the same guarantee as the project's.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aio_pika
from taskiq import AsyncResultBackend, TaskiqResult
from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.queue import Queue, QueueType

from tests.bench.noop import noop_result

URL = os.environ.get("CPW_BENCH_URL", "amqp://guest:guest@127.0.0.1/")
RESULTS = "taskiq.results"


class RabbitResultBackend(AsyncResultBackend[Any]):
    """Results as persistent messages on one durable queue; the submitter consumes them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self.results: dict[str, TaskiqResult[Any]] = {}
        self.waiters: dict[str, asyncio.Future[TaskiqResult[Any]]] = {}

    async def startup(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.channel.declare_queue(RESULTS, durable=True)

    async def shutdown(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def set_result(self, task_id: str, result: TaskiqResult[Any]) -> None:
        assert self.channel is not None
        message = aio_pika.Message(
            result.model_dump_json().encode(),
            headers={"task_id": task_id},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
        )
        await self.channel.default_exchange.publish(message, RESULTS)

    # the submitter's side
    async def listen(self, prefetch: int = 2000) -> None:
        assert self.connection is not None
        consume = await self.connection.channel(publisher_confirms=False)
        await consume.set_qos(prefetch_count=prefetch)
        queue = await consume.declare_queue(RESULTS, durable=True)

        async def on_result(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            task_id = str((message.headers or {})["task_id"])
            result = TaskiqResult[Any].model_validate_json(message.body)
            waiter = self.waiters.pop(task_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)
            else:
                self.results[task_id] = result
            await message.ack()

        await queue.consume(on_result)

    async def wait(self, task_id: str) -> TaskiqResult[Any]:
        if task_id in self.results:
            return self.results.pop(task_id)
        waiter = self.waiters[task_id] = asyncio.get_running_loop().create_future()
        return await waiter

    async def is_result_ready(self, task_id: str) -> bool:
        return task_id in self.results

    async def get_result(self, task_id: str, with_logs: bool = False) -> TaskiqResult[Any]:
        return self.results.pop(task_id)


async def _noop(request: dict) -> dict:
    return noop_result(request)


def make_broker(url: str) -> tuple[AioPikaBroker, RabbitResultBackend, Any]:
    """A broker, its result backend and the no-op task (the worker's, or a submitter's for one URL)."""
    backend = RabbitResultBackend(url)
    taskiq_broker = AioPikaBroker(
        url,
        qos=32,
        task_queues=[Queue(name="taskiq", type=QueueType.CLASSIC, durable=True)],
    ).with_result_backend(backend)
    return taskiq_broker, backend, taskiq_broker.task(task_name="bench.noop")(_noop)


broker, result_backend, noop = make_broker(URL)
