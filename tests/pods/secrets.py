"""The Secrets the chart expects to exist before `helm install`, as an operator creates them, with real values."""

from __future__ import annotations

import json
import uuid

from tests.conftest import BrokerEndpoint
from tests.pods import kube
from tests.pods.cluster import BROKER_HOST, broker_url

# value set -> (broker URL Secret, its keys) and (API tokens Secret, its keys), as an operator creates them
SECRETS = {
    "default": (("cpw-rabbitmq", ("url",)), ("cpw-api-tokens", "tokens.yaml")),
    "production": (("rabbitmq-credentials", ("url", "management-url")), ("api-tokens", "tokens.yaml")),
    "monitoring-on": (("cpw-rabbitmq", ("url",)), ("cpw-api-tokens", "tokens.yaml")),
    # the chart makes the broker Secret from the values' URLs; tests/pods/broker.py makes their user
    "keda-on": (None, ("cpw-api-tokens", "tokens.yaml")),
    # the RabbitMQ cluster operator makes it (played by tests/pods/broker.py)
    "rabbitmq-cluster": (None, ("cpw-api-tokens", "tokens.yaml")),
    "postgresql": (("cpw-rabbitmq", ("url",)), ("cpw-api-tokens", "tokens.yaml")),
}
# value set -> the PostgreSQL DSN Secret and its key (global.postgresql.existingSecret / existingSecretKey)
POSTGRES_SECRETS = {"postgresql": ("cpw-postgresql", "dsn")}


def prerequisites(
    value_set: str, rabbitmq: BrokerEndpoint, vhost: str, postgres_dsn: str | None = None
) -> tuple[dict, str]:
    """The Secrets that must exist before `helm install`, with real values, and the API token of the test."""
    broker, (tokens_secret, tokens_key) = SECRETS[value_set]
    urls = {"url": broker_url(rabbitmq.amqp_url, vhost), "management-url": f"http://guest:guest@{BROKER_HOST}:15672"}
    token, helm_token = uuid.uuid4().hex, uuid.uuid4().hex
    tokens = json.dumps({token: "tenant-a", helm_token: "helm-test"})
    objects = {("Secret", tokens_secret): kube.secret({tokens_key: tokens, "helm-test-token": helm_token})}
    if broker is not None:
        objects[("Secret", broker[0])] = kube.secret({k: urls[k] for k in broker[1]})
    if value_set in POSTGRES_SECRETS:
        assert postgres_dsn, f"{value_set} keeps operations in PostgreSQL: it needs a DSN"
        name, key = POSTGRES_SECRETS[value_set]
        objects[("Secret", name)] = kube.secret({key: postgres_dsn})
    return objects, token
