"""Celery 5 for the benchmark: the same RabbitMQ, rpc:// results, threads pool of 32.

Worker: celery -A tests.bench.celery_app worker --pool threads --concurrency 32 --without-gossip
--without-mingle --without-heartbeat (CPW_BENCH_URL is the broker URL, vhost included).

Configured for throughput as Celery's "Optimizing" guide says for many short tasks: a large prefetch
multiplier (the guide: "If you have lots of short tasks, and throughput/round trip latency is important
to you, this number should be large"); gossip, mingle and the event heartbeat off (broker chatter a
benchmark does not need). For the same guarantees as the other systems: publisher confirms on
(kombu/py-amqp `confirm_publish`), persistent task and result messages, durable queue, and
`task_acks_late` so a job is acked after its result was sent, as the project and raw aio-pika do.
"""

from __future__ import annotations

import os

from celery import Celery

from tests.bench.noop import noop_result

PREFETCH_MULTIPLIER = int(os.environ.get("CPW_BENCH_CELERY_PREFETCH_MULTIPLIER", "64"))


def make_app(url: str) -> Celery:
    """The Celery app for one broker URL (the worker's, or a submitter's)."""
    celery = Celery("cpw-bench", broker=url, backend="rpc://")
    celery.conf.update(
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        task_default_delivery_mode="persistent",
        result_persistent=True,
        task_acks_late=True,
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    celery.task(name="bench.noop")(_noop)
    return celery


def _noop(request: dict) -> dict:
    return noop_result(request)


app = make_app(os.environ.get("CPW_BENCH_URL", "pyamqp://guest:guest@127.0.0.1//"))
