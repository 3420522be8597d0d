"""Brokers, chosen by URL: amqp:// and amqps:// -> RabbitMQ, memory:// -> the embedded broker."""

from __future__ import annotations

from ..topology import Topology
from .base import Broker, Delivery, QueueStats, StreamMessage, Subscription


def open_broker(url: str, topology: Topology, **options: object) -> Broker:
    """A broker for `url`, not yet connected."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("amqp", "amqps"):
        from .rabbitmq import RabbitMQBroker

        return RabbitMQBroker(url, topology, **options)  # type: ignore[arg-type]
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(url, topology)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}: use amqp://, amqps:// or memory://")


__all__ = ["Broker", "Delivery", "QueueStats", "StreamMessage", "Subscription", "open_broker"]
