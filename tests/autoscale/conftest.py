"""A RabbitMQ node of the drill's own: its management API refreshes queue counts every second, so a scaler
that polls every second sees fresh numbers (the default 5 s would hide a compressed-time burst)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import pytest

from tests.autoscale.drill import BROKER_CONFIG
from tests.conftest import BrokerEndpoint
from tests.support.rabbitmq import RabbitMQServer, installed


@pytest.fixture(scope="session")
def drill_broker() -> Iterator[BrokerEndpoint]:
    if not installed():
        pytest.fail("rabbitmq-server is not installed: run `make system-deps`")
    server = RabbitMQServer(extra_config=list(BROKER_CONFIG)).start()
    try:
        yield BrokerEndpoint(server.amqp_url, server.management_url, server)
    finally:
        server.cleanup()


@pytest.fixture
def drill_vhost(drill_broker: BrokerEndpoint) -> Iterator[tuple[str, str]]:
    """(amqp URL, management URL in KEDA's `host` form, with the vhost as the last path segment)."""
    name = drill_broker.new_vhost()
    management = drill_broker.management_url.rstrip("/") + "/" + urllib.parse.quote(name, safe="")
    yield drill_broker.url_for(name), management
    drill_broker.delete_vhost(name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The full drill (marker `drill`, minutes) runs only when asked for (`make autoscale-drill` selects
    `-m drill`); the project's addopts (`-m 'not bench'`) would otherwise pull it into `make test`."""
    if "drill" in (config.option.markexpr or ""):
        return
    here = __file__.rsplit("/", 1)[0]
    keep, drop = [], []
    for item in items:
        (drop if str(item.path).startswith(here) and item.get_closest_marker("drill") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
