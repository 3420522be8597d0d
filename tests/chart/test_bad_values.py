"""Bad values fail the install with a message that names the value to fix."""

from __future__ import annotations

import re

import helm_python
import pytest

from tests.chart.chartlib import render_values

pytestmark = pytest.mark.timeout(60)

CASES = {
    # name: (values, error type, words the message must contain)
    "typo in a worker key": (
        {"workers": {"replicaCont": 3}},
        helm_python.HelmValuesError,
        ["workers", "replicaCont", "not allowed"],
    ),
    "typo in a top-level key": (
        {"networkPolicies": {"enabled": False}},
        helm_python.HelmValuesError,
        ["networkPolicies", "not allowed"],
    ),
    "typo in a global key": (
        {"global": {"rabbitmq": {"existingSecrets": "x"}}},
        helm_python.HelmValuesError,
        ["/global/rabbitmq", "existingSecrets"],
    ),
    "string for replicaCount": (
        {"workers": {"replicaCount": "3"}},
        helm_python.HelmValuesError,
        ["/replicaCount", "string", "integer"],
    ),
    "result cap below 1 KiB": (
        {"workers": {"maxResultBytes": 100}},
        helm_python.HelmValuesError,
        ["/maxResultBytes", "1,024"],
    ),
    "negative tenant rate": ({"api": {"tenantRate": -1}}, helm_python.HelmValuesError, ["/tenantRate"]),
    "tenant burst of 0": ({"api": {"tenantBurst": 0}}, helm_python.HelmValuesError, ["/tenantBurst"]),
    "bad log level": ({"api": {"logLevel": "TRACE"}}, helm_python.HelmValuesError, ["/logLevel"]),
    "root user": (
        {"workers": {"podSecurityContext": {"runAsUser": 0, "runAsGroup": 10001, "fsGroup": 10001}}},
        helm_python.HelmValuesError,
        ["/podSecurityContext/runAsUser", "10,000"],
    ),
    "container without limits": (
        {"workers": {"resources": {"limits": None}}},
        helm_python.HelmValuesError,
        ["resources"],
    ),
    "credential as env from a Secret": (
        {"workers": {"extraEnv": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}},
        helm_python.HelmValuesError,
        ["/extraEnv/0"],
    ),
    "KEDA watching another vhost than the workers": (
        {
            "global": {
                "rabbitmq": {"url": "amqp://u:p@rabbit:5672/team-a", "managementUrl": "http://u:p@rabbit:15672/"}
            },
            "workers": {"autoscaling": {"enabled": True}},
        },
        helm_python.HelmRenderError,
        ["global.rabbitmq.vhost", "team-a", "KEDA would watch"],
    ),
    "KEDA on without a broker Secret": (
        {"workers": {"autoscaling": {"enabled": True}}},
        helm_python.HelmRenderError,
        ["workers.autoscaling.enabled", "management", "global.rabbitmq"],
    ),
    "KEDA on with a Secret lacking the management key": (
        {
            "workers": {"autoscaling": {"enabled": True}},
            "global": {"rabbitmq": {"existingSecret": "s", "existingSecretKeys": {"managementUrl": ""}}},
        },
        helm_python.HelmRenderError,
        ["management"],
    ),
    "KEDA min above max": (
        {
            "workers": {"autoscaling": {"enabled": True, "minReplicas": 9, "maxReplicas": 3}},
            "global": {"rabbitmq": {"existingSecret": "s"}},
        },
        helm_python.HelmRenderError,
        ["minReplicas", "maxReplicas"],
    ),
    "PDB that blocks drains": (
        {"workers": {"replicaCount": 3, "podDisruptionBudget": {"minAvailable": 3}}},
        helm_python.HelmRenderError,
        ["workers.podDisruptionBudget.minAvailable", "drain"],
    ),
    # Issue 17, item 9: the guard missed a percentage and a fleet that scales to zero (one pod at times).
    "PDB of 100%": (
        {"api": {"replicaCount": 3, "podDisruptionBudget": {"minAvailable": "100%"}}},
        helm_python.HelmRenderError,
        ["api.podDisruptionBudget.minAvailable (100%)", "drain"],
    ),
    "PDB percentage that rounds up to every pod": (
        {"api": {"replicaCount": 3, "podDisruptionBudget": {"minAvailable": "90%"}}},
        helm_python.HelmRenderError,
        ["api.podDisruptionBudget.minAvailable (90%)", "drain"],
    ),
    "PDB of 1 on workers that scale to zero": (
        {
            "global": {"rabbitmq": {"url": "amqp://a:b@h/", "managementUrl": "http://a:b@h:15672"}},
            "workers": {
                "autoscaling": {"enabled": True, "minReplicas": 0},
                "podDisruptionBudget": {"minAvailable": 1},
            },
        },
        helm_python.HelmRenderError,
        ["workers.podDisruptionBudget.minAvailable (1)", "scales to zero"],
    ),
    "PDB with maxUnavailable 0%": (
        {"workers": {"podDisruptionBudget": {"maxUnavailable": "0%"}}},
        helm_python.HelmRenderError,
        ["workers.podDisruptionBudget.maxUnavailable (0%)", "drain"],
    ),
    "API grace period below the longest long-poll": (
        {"api": {"terminationGracePeriodSeconds": 30}},
        helm_python.HelmRenderError,
        ["api.terminationGracePeriodSeconds (30)", "long-polls"],
    ),
    "url that is not amqp": (
        {"global": {"rabbitmq": {"url": "redis://h:6379"}}},
        helm_python.HelmValuesError,
        ["/global/rabbitmq/url"],
    ),
    "url and existingSecret": (
        {"global": {"rabbitmq": {"url": "amqp://a:b@h/", "existingSecret": "s"}}},
        helm_python.HelmRenderError,
        ["either global.rabbitmq.url", "existingSecret"],
    ),
    "cluster and url": (
        {"global": {"rabbitmq": {"url": "amqp://a:b@h/", "cluster": {"enabled": True}}}},
        helm_python.HelmRenderError,
        ["cluster.enabled"],
    ),
    "management URL without url": (
        {"global": {"rabbitmq": {"managementUrl": "http://a:b@h:15672/"}}},
        helm_python.HelmRenderError,
        ["managementUrl", "url"],
    ),
    "tokens and existingSecret": (
        {"api": {"auth": {"tokens": {"t": "x"}, "existingSecret": "s"}}},
        helm_python.HelmRenderError,
        ["api.auth.tokens", "existingSecret"],
    ),
    "bad digest": ({"workers": {"image": {"digest": "latest"}}}, helm_python.HelmValuesError, ["/image/digest"]),
    "classic jobs queue on a multi-node operator cluster": (
        {"global": {"rabbitmq": {"cluster": {"enabled": True}}, "broker": {"queueType": "classic"}}},
        helm_python.HelmValuesError,
        ["/global/broker/allowClassicQueueOnCluster", "must be true"],
    ),
    "unknown queue type": (
        {"global": {"broker": {"queueType": "stream"}}},
        helm_python.HelmValuesError,
        ["/global/broker/queueType"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_values_fail_with_a_readable_message(case: str) -> None:
    values, error, words = CASES[case]
    with pytest.raises(error) as info:
        render_values(values)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    assert len(message) < 1500, "the message should be short enough to read"
    assert not re.search(r"amqp://a:b@", message), "messages never echo credentials"


def test_a_url_with_credentials_is_masked_in_the_error() -> None:
    # reaching the template check (not the schema) needs a scheme the schema lets through
    from tests.chart.chartlib import load_chart

    with load_chart() as chart, pytest.raises(helm_python.HelmError) as info:
        chart.render(
            {"global": {"rabbitmq": {"url": "amqp://user:secret@h/", "existingSecret": "s"}}},
            name="cpw",
            namespace="ns",
        )
    assert "secret@" not in str(info.value)


@pytest.mark.parametrize(
    "values",
    [
        {"api": {"replicaCount": 3, "podDisruptionBudget": {"minAvailable": "60%"}}},  # 2 of 3
        {"api": {"replicaCount": 3, "podDisruptionBudget": {"minAvailable": 2}}},
        {"workers": {"replicaCount": 0, "podDisruptionBudget": {"minAvailable": 1}}},  # no pods, nothing to block
    ],
)
def test_a_pdb_that_allows_an_eviction_renders(values: dict) -> None:
    assert render_values(values)
