"""Which broker failures a worker or API start retries (BrokerUnavailable) and which it reports at once."""

from __future__ import annotations

import aiormq
import pytest

from controlplane_workers.broker.rabbitmq import _unavailable
from controlplane_workers.errors import BrokerUnavailable

pytestmark = pytest.mark.timeout(10)


def test_a_stream_whose_member_has_not_started_yet_is_a_passing_state() -> None:
    # CI 2026-12-01: the second of two workers starting together on a fresh vhost exited 1 on this.
    refused = aiormq.exceptions.ChannelPreconditionFailed(
        "PRECONDITION_FAILED - queue 'queue 'provider.control' in vhost 'v'' does not have a replica on the local node"
    )
    with pytest.raises(BrokerUnavailable, match="cannot follow provider.control"):
        with _unavailable("cannot follow provider.control"):
            raise refused


def test_a_topology_that_disagrees_with_ours_is_not_retried() -> None:
    disagrees = aiormq.exceptions.ChannelPreconditionFailed(
        "PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'provider.jobs'"
    )
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        with _unavailable("cannot consume jobs"):
            raise disagrees


def test_a_dropped_connection_is_retried() -> None:
    with pytest.raises(BrokerUnavailable):
        with _unavailable("cannot consume jobs"):
            raise ConnectionResetError("reset by peer")
