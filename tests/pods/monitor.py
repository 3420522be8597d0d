"""Prometheus without a cluster: every PodMonitor and ServiceMonitor endpoint scraped where the operator's
generated scrape config would point it.

A PodMonitor selects pods by label in the namespaces it names and scrapes the container port its endpoint
names; a ServiceMonitor selects Services by label, takes the Service port its endpoint names and scrapes that
port's targetPort on the pods behind it. Either way the answer must be 200 with Prometheus text. A monitor
field not modelled here fails, as an unknown pod field does.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.pods import kube
from tests.pods.cluster import Cluster
from tests.pods.runner import PodRun

ENDPOINT = {"port": True, "path": True, "interval": True, "scrapeTimeout": True}
_SELECTOR = {"matchLabels": True, "matchExpressions": {"key": True, "operator": True, "values": True}}
MONITORS: dict[str, dict[str, Any]] = {
    "PodMonitor": {"selector": _SELECTOR, "namespaceSelector": {"matchNames": True}, "podMetricsEndpoints": ENDPOINT},
    "ServiceMonitor": {"selector": _SELECTOR, "namespaceSelector": {"matchNames": True}, "endpoints": ENDPOINT},
}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) applied to `labels`."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }.get(operator)
        assert ok is not None, f"selector operator {operator} is not a Kubernetes one"
        if not ok:
            return False
    return True


def targets(cluster: Cluster) -> list[tuple[str, PodRun, int, str]]:
    """(monitor, pod, port, path) of every scrape target the monitors of the value set define."""
    out: list[tuple[str, PodRun, int, str]] = []
    for monitor in (d for d in cluster.docs if d["kind"] in MONITORS):
        spec, name = monitor["spec"], f"{monitor['kind']} {monitor['metadata']['name']}"
        problems = kube.not_understood(spec, MONITORS[monitor["kind"]], f"{monitor['kind']}.spec")
        assert not problems, f"fields the runner's Prometheus does not model: {problems}"
        namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or [monitor["metadata"]["namespace"]]
        runs = [
            r for r in cluster.runs.values() if r.pod.namespace in namespaces and cluster.kinds[r.pod.name] != "Pod"
        ]
        found: list[tuple[str, PodRun, int, str]] = []
        if monitor["kind"] == "PodMonitor":
            for run in (r for r in runs if selects(spec["selector"], r.pod.labels)):
                for endpoint in spec["podMetricsEndpoints"]:
                    port = kube.named_port(run.container, endpoint["port"])
                    found.append((name, run, port, endpoint.get("path", "/metrics")))
        else:
            for service in (s for s in cluster.services if selects(spec["selector"], s["metadata"].get("labels", {}))):
                run = cluster.selected(service)
                for endpoint in spec["endpoints"]:
                    ports = [p for p in service["spec"]["ports"] if p.get("name") == endpoint["port"]]
                    if run is None or not ports:
                        continue
                    port = kube.named_port(run.container, ports[0].get("targetPort", ports[0]["port"]))
                    found.append((name, run, port, endpoint.get("path", "/metrics")))
        assert found, f"{name} selects nothing to scrape"
        out += found
    return out


def scrape(run: PodRun, port: int, path: str) -> str:
    """GET the metrics as Prometheus would (from outside the pod, at its IP), require Prometheus text."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(run.socket(port))), timeout=10) as client:
        response = client.get(f"http://{run.pod.pod_ip}:{port}{path}")
    assert response.status_code == 200, f"{run.pod.name}:{port}{path} answered {response.status_code}"
    assert "# TYPE " in response.text, f"{run.pod.name}:{port}{path} is not Prometheus text"
    return response.text
