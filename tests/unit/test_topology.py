"""Queue and stream arguments: what a cluster needs, without breaking streams created before."""

from __future__ import annotations

import pytest

from controlplane_workers.settings import SettingsError, load_settings
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


def _route(topology: Topology, key: str) -> list[int]:
    """The levels whose queues a key waits in, walking the cascade's bindings as RabbitMQ's topic matching
    would (a '*' is one word, a trailing '#' zero or more)."""
    from controlplane_workers.topology import DELAY_LEVELS

    words, waits = key.split("."), []
    for level in reversed(range(DELAY_LEVELS)):
        ones = topology.delay_pattern(level, "1").split(".")
        zeros = topology.delay_pattern(level, "0").split(".")
        matched = [p for p in (ones, zeros) if all(a in ("*", b) for a, b in zip(p[:-1], words, strict=False))]
        assert len(matched) == 1, (level, key)  # every key takes exactly one way at every level
        if matched[0] is ones:
            waits.append(level)
    return waits


@pytest.mark.parametrize("delay_ms", [0, 1, 2, 1000, 1500, 86_400_000, 2**30 - 1])
def test_a_delay_waits_in_the_levels_of_its_binary_digits(delay_ms: int) -> None:
    topology = Topology()
    waits = _route(topology, topology.delay_routing_key(delay_ms))
    assert sum(2**level for level in waits) == delay_ms
    # each level's TTL is its weight, and it dead-letters to the level below (-1: the delivery exchange)
    for level in waits:
        args = topology.delay_queue_arguments(level)
        assert args["x-message-ttl"] == 2**level and args["x-dead-letter-exchange"] == topology.delay_exchange(
            level - 1
        )


def test_the_cascade_holds_every_delay_the_setting_allows_and_refuses_more() -> None:
    from controlplane_workers.topology import MAX_CASCADE_DELAY

    assert MAX_CASCADE_DELAY > 12 * 86400  # 2**30 ms: ~12.4 days
    with pytest.raises(ValueError, match="more than the cascade holds"):
        Topology.delay_routing_key(2**30)
    assert len(Topology.delay_routing_key(2**30 - 1)) < 255  # an AMQP routing key's limit
    with pytest.raises(SettingsError, match="CPW_JOB_MAX_DELAY: Input should be less than or equal to 1073741.823"):
        load_settings(rabbitmq_url="memory://", job_max_delay=MAX_CASCADE_DELAY + 1, results_max_age="1Y")


def test_the_maximum_delay_may_not_outlive_the_results_stream() -> None:
    assert load_settings(rabbitmq_url="memory://").job_max_delay == 86400  # = the default retention, 24h
    assert load_settings(rabbitmq_url="memory://", results_max_age="7D", job_max_delay=7 * 86400).job_max_delay
    with pytest.raises(SettingsError, match=r"^CPW_JOB_MAX_DELAY \(3601 s\) is longer than CPW_RESULTS_MAX_AGE \(1h\)"):
        load_settings(rabbitmq_url="memory://", results_max_age="1h", job_max_delay=3601)


def test_republishing_into_the_cascade_drops_the_dead_letter_history() -> None:
    # RabbitMQ drops a message dead-lettered to a queue its x-death names (a cycle, it thinks)
    from controlplane_workers.broker.base import delay_ms, without_deaths

    headers = {"x-death": [{"queue": "provider.jobs.delay.3"}], "x-first-death-queue": "q", "x-cpw-attempt": 2}
    assert without_deaths(headers) == {"x-cpw-attempt": 2}
    assert delay_ms(0.0001) == 1 and delay_ms(1.5) == 1500 and delay_ms(-3) == 0  # rounded up: never early
