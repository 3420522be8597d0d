"""Queue and stream arguments: what a cluster needs, without breaking streams created before."""

from __future__ import annotations

import pytest

from controlplane_workers.settings import load_settings
from controlplane_workers.topology import Topology

pytestmark = pytest.mark.timeout(10)


def test_streams_leave_their_replica_count_to_the_broker_unless_asked() -> None:
    # RabbitMQ compares x-initial-cluster-size on every redeclaration: a stream created without it
    # must keep being declared without it.
    assert "x-initial-cluster-size" not in Topology().stream_arguments()
    settings = load_settings(rabbitmq_url="memory://", stream_replicas=3)
    assert Topology.from_settings(settings).stream_arguments()["x-initial-cluster-size"] == 3


def test_a_quorum_jobs_queue_has_a_delivery_limit_and_no_priorities() -> None:
    args = Topology.from_settings(load_settings(rabbitmq_url="memory://", queue_type="quorum")).jobs_queue_arguments()
    assert args["x-queue-type"] == "quorum" and args["x-delivery-limit"] == 20
    assert "x-max-priority" not in args


def test_the_stream_replicas_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPW_STREAM_REPLICAS", "5")
    assert load_settings(rabbitmq_url="memory://").stream_replicas == 5
    monkeypatch.setenv("CPW_STREAM_REPLICAS", "-1")
    with pytest.raises(Exception, match="STREAM_REPLICAS|stream_replicas"):
        load_settings(rabbitmq_url="memory://")
