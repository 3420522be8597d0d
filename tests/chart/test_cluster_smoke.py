"""Smoke test on a real cluster: install the chart, wait until the pods are ready, run `helm test`.

Runs only when a kubeconfig is provided (KUBECONFIG or ~/.kube/config) and pytest-helm-charts is installed;
otherwise it skips and says why. The cluster must already have what the chart needs: the images (set them with
ATS_APP_CONFIG_FILE_PATH, a values file, like pytest-helm-charts' --values-file-path), a reachable RabbitMQ
and the Secrets the values name. KEDA and prometheus-operator are needed only if the values enable them.

    KUBECONFIG=~/.kube/kind ATS_APP_CONFIG_FILE_PATH=smoke-values.yaml pytest tests/chart -m cluster
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import yaml

from tests.chart.chartlib import CHART

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


def _kubeconfig() -> str | None:
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if env and Path(env).expanduser().is_file():
        return str(Path(env).expanduser())
    default = Path.home() / ".kube" / "config"
    return str(default) if default.is_file() else None


@pytest.fixture(scope="module")
def kubeconfig() -> str:
    path = _kubeconfig()
    if not path:
        pytest.skip("no kubeconfig (KUBECONFIG unset and no ~/.kube/config): the cluster smoke test needs a cluster")
    pytest.importorskip("pytest_helm_charts", reason="pytest-helm-charts is not installed")
    os.environ.setdefault("KUBECONFIG", path)  # pytest-helm-charts' kube_config fixture reads it
    return path


def test_install_pods_ready_and_helm_test(kubeconfig: str, request: pytest.FixtureRequest) -> None:
    import helm_python
    import pykube
    from pytest_helm_charts.k8s.deployment import wait_for_deployments_to_run
    from pytest_helm_charts.k8s.namespace import ensure_namespace_exists

    kube_cluster = request.getfixturevalue("kube_cluster")
    values_path = os.environ.get("ATS_APP_CONFIG_FILE_PATH", "")
    values = yaml.safe_load(Path(values_path).read_text()) if values_path else {}
    namespace = os.environ.get("CPW_SMOKE_NAMESPACE", "cpw-smoke")
    release = f"smoke-{uuid.uuid4().hex[:6]}"
    ensure_namespace_exists(kube_cluster.kube_client, namespace)

    with helm_python.Config(kubeconfig_path=kubeconfig, namespace=namespace) as cfg:
        cfg.install(str(CHART), release, values, namespace=namespace, wait="watcher", timeout=600)
        try:
            names = [
                d.name
                for d in pykube.Deployment.objects(kube_cluster.kube_client).filter(
                    namespace=namespace, selector={"app.kubernetes.io/instance": release}
                )
            ]
            assert names, "the release has no Deployments"
            wait_for_deployments_to_run(kube_cluster.kube_client, names, namespace, timeout_sec=300)
            # the test pod submits a no-op job through the API and waits for Succeeded; a failure raises
            cfg.test(release, timeout=300, logs=True)
        finally:
            cfg.uninstall(release, wait="watcher", timeout=300, ignore_not_found=True)
