"""The pod runner catches what a first `helm install` would: breakages applied to a rendered copy of the chart.

Each test edits the rendered manifests the way a template mistake would, starts the affected pod and requires
the runner to fail it for the reason a cluster would (the process cannot find its setting, the probe never
answers), so a green tests/pods means something.
"""

from __future__ import annotations

import pytest

from tests.chart.chartlib import find, render_set
from tests.pods.test_pods import wait_up

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(120)]


def _container(docs: list[dict], deployment: str) -> dict:
    (doc,) = find(docs, "Deployment", deployment)
    return doc["spec"]["template"]["spec"]["containers"][0]


def test_a_renamed_env_var_is_caught(make_cluster) -> None:  # noqa: ANN001
    """CPW_API_TOKENS_FILE spelt otherwise: the API finds no tokens and must not come up."""
    docs = render_set("default")
    env = _container(docs, "cpw-api")["env"]
    (item,) = [e for e in env if e["name"] == "CPW_API_TOKENS_FILE"]
    item["name"] = "CPW_API_TOKEN_FILES"
    cluster, _ = make_cluster("default", docs)
    (api,) = [r for r in cluster.of_kind("Deployment") if r.pod.name.startswith("cpw-api-")]
    api.start()
    with pytest.raises(AssertionError, match="CPW_API_TOKENS_FILE is not set"):
        wait_up(api)


def test_a_probe_on_the_wrong_port_is_caught(make_cluster) -> None:  # noqa: ANN001
    """The worker's readiness probe on 8002, where nothing listens: never ready within its budget."""
    docs = render_set("default")
    _container(docs, "cpw-worker")["readinessProbe"]["httpGet"]["port"] = 8002
    cluster, _ = make_cluster("default", docs)
    (worker,) = [r for r in cluster.of_kind("Deployment") if r.pod.name.startswith("cpw-worker-")]
    worker.start()
    with pytest.raises(AssertionError, match="readinessProbe not passed"):
        wait_up(worker)
    assert worker.log.started.is_set() and worker.process is not None and worker.process.poll() is None
