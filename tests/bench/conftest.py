"""The benchmarks' own broker, and the `bench:` line printed last in the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import BrokerEndpoint
from tests.support.rabbitmq import own_node

BENCH_LINES: list[str] = []


@pytest.fixture(scope="module")
def bench_broker() -> Iterator[BrokerEndpoint]:
    """A RabbitMQ node of the benchmark's own (never CPW_TEST_RABBITMQ_URL's, never another suite's)."""
    for server in own_node():
        yield BrokerEndpoint(server.amqp_url, server.management_url, server)


def pytest_unconfigure(config: pytest.Config) -> None:
    # After pytest's own summary: the `bench:` line is the last line of `make bench`.
    for line in BENCH_LINES:
        print(line, flush=True)
