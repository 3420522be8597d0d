"""Render the umbrella chart offline with the real Helm v4 engine (helm-python-sdk) and query the result."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "controlplane-workers"
CI_VALUES = CHART / "ci"
SCHEMAS = ROOT / "tests" / "schemas"
RELEASE = "cpw"
NAMESPACE = "cpw-system"

# Kinds that are not namespaced (none of them is rendered by default; ClusterRole with rbac.clusterScoped).
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "PriorityClass", "CustomResourceDefinition", "Namespace"}


def _file(name: str) -> dict[str, Any]:
    return yaml.safe_load((CI_VALUES / f"{name}-values.yaml").read_text()) or {}


def value_sets() -> dict[str, dict[str, Any]]:
    """The matrix of the issue: defaults, the seed's quick start, development, production and high-throughput examples,
    KEDA on/off, monitoring on/off, existingSecret, RabbitmqCluster on, NetworkPolicies off, and more."""
    return {
        "default": {},
        # the seed's quick start: --set workers.enabled=true --set workers.replicaCount=3
        "seed-quickstart": helm_python.parse_set_string("workers.enabled=true,workers.replicaCount=3"),
        "seed-development": _file("seed-development"),
        "seed-production": _file("seed-production"),
        "seed-high-throughput": _file("seed-high-throughput"),
        "high-throughput-keda": _file("high-throughput-keda"),
        "production": _file("production"),
        "keda-on": _file("keda"),
        "keda-off": {"workers": {"autoscaling": {"enabled": False}}},
        "monitoring-on": _file("monitoring"),
        "monitoring-off": {
            "monitoring": {
                k: {"enabled": False} for k in ("podMonitor", "serviceMonitor", "prometheusRule", "dashboards")
            }
        },
        "existing-secret": _file("existing-secret"),
        "rabbitmq-cluster": _file("rabbitmq-cluster"),
        "postgresql": _file("postgresql"),
        "postgresql-cluster": _file("postgresql-cluster"),
        "no-networkpolicy": _file("no-networkpolicy"),
        "kitchen-sink": _file("kitchen-sink"),
        "workers-only": {"api": {"enabled": False}},
        "api-only": {"workers": {"enabled": False}},
    }


VALUE_SETS = value_sets()


def load_chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render_values(values: dict[str, Any], *, name: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    """Render and parse: every non-empty document, with the template it came from under `__template`."""
    with load_chart() as chart:
        out = chart.render(copy.deepcopy(values), name=name, namespace=namespace, is_install=True)
    docs: list[dict] = []
    for template, text in sorted(out.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = template
                docs.append(doc)
    return docs


@functools.cache
def _render_set(name: str) -> tuple[dict, ...]:
    return tuple(render_values(VALUE_SETS[name]))


def render_set(name: str) -> list[dict]:
    """Rendered objects of a named value set (cached; callers get deep copies)."""
    return copy.deepcopy(list(_render_set(name)))


def lint_problems(values: dict[str, Any]) -> list[Any]:
    """What `helm lint --strict` reports as an error or warning (a warning is an error under --strict)."""
    report = helm_python.lint(CHART, copy.deepcopy(values), strict=True, namespace=NAMESPACE)
    return [*report["errors"], *(m for m in report["messages"] if m["severity"] >= 2)]  # 2 = warning, 3 = error


def notes(values: dict[str, Any]) -> str:
    with load_chart() as chart:
        out = chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(v for k, v in out.items() if k.endswith("NOTES.txt"))


def strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "__template"}


def to_yaml_stream(docs: list[dict]) -> str:
    return yaml.safe_dump_all([strip(d) for d in docs], sort_keys=False)


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(docs: list[dict]) -> Iterator[tuple[dict, dict, dict]]:
    """(object, pod metadata, pod spec) of every workload and bare pod."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            tpl = d["spec"]["template"]
            yield d, tpl.get("metadata", {}), tpl["spec"]
        elif d["kind"] == "Pod":
            yield d, d["metadata"], d["spec"]


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def labels_match(selector: dict, labels: dict) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels + matchExpressions)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, key, values = e["operator"], e["key"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
