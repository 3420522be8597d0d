"""Shared fixtures: a real RabbitMQ for the session, and a fresh broker per test.

`CPW_TEST_RABBITMQ_URL` (and `CPW_TEST_RABBITMQ_MANAGEMENT_URL`) point the suite at an existing
broker instead of starting one.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from tests.support.rabbitmq import RabbitMQServer, installed, management_request

if TYPE_CHECKING:
    from pathlib import Path


@dataclass
class BrokerEndpoint:
    amqp_url: str
    management_url: str
    server: RabbitMQServer | None = None

    def _request(self, method: str, path: str, body: object | None = None) -> object:
        parts = urllib.parse.urlsplit(self.management_url)
        base = f"{parts.scheme}://{parts.hostname}:{parts.port}"
        return management_request(base, parts.username or "", parts.password or "", method, path, body)

    def request(self, method: str, path: str, body: object | None = None) -> object:
        """One management API call as the broker's administrator (fixtures that set up users and vhosts)."""
        return self._request(method, path, body)

    def new_vhost(self, name: str | None = None) -> str:
        """A fresh virtual host: each test gets its own topology and nothing left over (`name`: one deleted
        before, made again)."""
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        self._request("PUT", f"/api/vhosts/{name}", {})
        user = urllib.parse.urlsplit(self.amqp_url).username or "guest"
        self._request("PUT", f"/api/permissions/{name}/{user}", {"configure": ".*", "write": ".*", "read": ".*"})
        return name

    def delete_vhost(self, name: str) -> None:
        try:
            self._request("DELETE", f"/api/vhosts/{name}")
        except OSError:
            pass

    def url_for(self, vhost: str) -> str:
        return self.amqp_url.rstrip("/") + "/" + urllib.parse.quote(vhost, safe="")

    def queue(self, vhost: str, name: str) -> dict:
        q = urllib.parse.quote
        return self._request("GET", f"/api/queues/{q(vhost, safe='')}/{q(name, safe='')}")  # type: ignore[return-value]


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[BrokerEndpoint]:
    url = os.environ.get("CPW_TEST_RABBITMQ_URL")
    if url:
        yield BrokerEndpoint(
            url, os.environ.get("CPW_TEST_RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")
        )
        return
    if not installed():
        pytest.fail("rabbitmq-server is not installed: run `make test` (it installs it) or set CPW_TEST_RABBITMQ_URL")
    server = RabbitMQServer().start()
    try:
        yield BrokerEndpoint(server.amqp_url, server.management_url, server)
    finally:
        server.cleanup()


@pytest.fixture
def vhost_url(rabbitmq: BrokerEndpoint) -> Iterator[str]:
    name = rabbitmq.new_vhost()
    yield rabbitmq.url_for(name)
    rabbitmq.delete_vhost(name)


@pytest.fixture(params=["memory", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The contract suite runs once on the embedded broker and once on a real RabbitMQ."""
    if request.param == "memory":
        from controlplane_workers.broker.memory import reset_nodes

        reset_nodes()
        yield f"memory://test-{uuid.uuid4().hex[:8]}"
        return
    endpoint: BrokerEndpoint = request.getfixturevalue("rabbitmq")
    name = endpoint.new_vhost()
    yield endpoint.url_for(name)
    endpoint.delete_vhost(name)


@pytest.fixture(scope="session")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's /opt/venv built as the Dockerfile builds it, once per session (tests/images, tests/pods)."""
    from tests.images.runtime import build_runtime_venv, bwrap_problem

    problem = bwrap_problem()
    if problem:
        pytest.fail(problem)
    return build_runtime_venv(tmp_path_factory.mktemp("image"))
