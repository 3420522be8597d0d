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


def _keda_breakage(make_cluster, docs: list[dict], match: str) -> None:  # noqa: ANN001
    """The keda-on set with one edit: the test's KEDA step must refuse it before any job is sent."""
    from tests.pods import keda
    from tests.pods.test_pods import scale_as_keda

    cluster, token = make_cluster("keda-on", docs)
    (worker,) = [r for r in cluster.of_kind("Deployment") if r.pod.name.startswith("cpw-worker-")]
    with pytest.raises(AssertionError, match=match):
        scale_as_keda(cluster, token, keda.scaled_objects(cluster)["cpw-worker"], worker)
    assert worker.process is None, "the worker was started although KEDA would never scale it"


def test_keda_watching_another_queue_is_caught(make_cluster) -> None:  # noqa: ANN001
    """The trigger's queueName spelt otherwise: KEDA would read 0 forever and keep the workers at zero."""
    docs = render_set("keda-on")
    find(docs, "ScaledObject")[0]["spec"]["triggers"][0]["metadata"]["queueName"] = "provider.job"
    _keda_breakage(make_cluster, docs, "KEDA watches provider.job, the worker consumes provider.jobs")


def test_keda_missing_a_delay_queue_is_caught(make_cluster) -> None:  # noqa: ANN001
    """The retry trigger's regex without the last attempt: a retry waiting there would not wake the fleet."""
    docs = render_set("keda-on")
    (retries,) = [t for t in find(docs, "ScaledObject")[0]["spec"]["triggers"] if t["name"] == "retry-queues"]
    retries["metadata"]["queueName"] = r"^provider\.jobs\.retry\.(2|3|4)$"
    _keda_breakage(make_cluster, docs, r"the worker moves retries from \[.*'provider\.jobs\.retry\.5'\]")


def test_keda_reading_a_missing_secret_key_is_caught(make_cluster) -> None:  # noqa: ANN001
    """The TriggerAuthentication names a key the broker Secret does not hold: KEDA cannot build its scaler."""
    docs = render_set("keda-on")
    find(docs, "TriggerAuthentication")[0]["spec"]["secretTargetRef"][0]["key"] = "management_url"
    _keda_breakage(make_cluster, docs, "KEDA reads key management_url of Secret cpw-rabbitmq")
