"""Every rendered object validates: core kinds with kubernetes-validate at the chart's kubeVersion bounds,
custom resources against the openAPIV3Schema of the CRDs in tests/schemas/crds (see SOURCES.md)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.chartlib import CHART, SCHEMAS, VALUE_SETS, render_set, strip

pytestmark = pytest.mark.timeout(120)

CRD_DIR = SCHEMAS / "crds"
CORE_GROUPS = {
    "v1",
    "apps/v1",
    "policy/v1",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
    "autoscaling/v2",
    "batch/v1",
}


def kube_versions() -> list[str]:
    """The lowest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest kubernetes-validate knows."""
    spec = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    low = re.search(r">=\s*v?(\d+\.\d+)", spec)
    assert low, f"kubeVersion {spec!r} has no lower bound"
    return [f"{low.group(1)}.0", kubernetes_validate.latest_version()]


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the CRD's openAPIV3Schema, made strict: unknown fields are errors (the API server
    would silently prune them, hiding typos)."""
    out: dict[tuple[str, str], dict] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(Path(path).read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if v.get("served"):
                out[(f"{group}/{v['name']}", kind)] = _strict(v["schema"]["openAPIV3Schema"])
    return out


def _strict(schema: dict) -> dict:
    if isinstance(schema, dict):
        schema = {k: _strict(v) if isinstance(v, (dict, list)) else v for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            schema.pop("type", None)
            schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if schema.get("nullable"):
            t = schema.get("type")
            if isinstance(t, str):
                schema["type"] = [t, "null"]
        return schema
    if isinstance(schema, list):
        return [_strict(x) for x in schema]
    return schema


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_core_kinds_validate_at_kube_versions(value_set: str) -> None:
    errors = []
    for doc in render_set(value_set):
        if doc["apiVersion"] not in CORE_GROUPS:
            continue
        for version in kube_versions():
            try:
                kubernetes_validate.validate(strip(doc), version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in getattr(e, "path", []))
                errors.append(f"{doc['kind']}/{doc['metadata']['name']} @ {version}: {path}: {str(e).splitlines()[0]}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_custom_resources_validate_against_crds(value_set: str) -> None:
    schemas = crd_schemas()
    errors = []
    for doc in render_set(value_set):
        if doc["apiVersion"] in CORE_GROUPS:
            continue
        key = (doc["apiVersion"], doc["kind"])
        assert key in schemas, f"{key} is rendered but no CRD schema for it is in {CRD_DIR}"
        body = strip(doc)
        body["metadata"] = {"name": body["metadata"]["name"]}  # ObjectMeta is validated by the API server
        validator = jsonschema.Draft7Validator(schemas[key])
        for err in validator.iter_errors(body):
            errors.append(
                f"{doc['kind']}/{doc['metadata']['name']}: /{'/'.join(map(str, err.absolute_path))}: {err.message}"
            )
    assert not errors, "\n".join(errors)


def test_every_crd_schema_copied_is_used_and_documented() -> None:
    rendered = {(d["apiVersion"], d["kind"]) for name in VALUE_SETS for d in render_set(name)}
    sources = (CRD_DIR / "SOURCES.md").read_text()
    for path in CRD_DIR.glob("*.yaml"):
        assert path.name in sources, f"{path.name} missing from SOURCES.md"
        crd = yaml.safe_load(path.read_text())
        kind = crd["spec"]["names"]["kind"]
        assert any(k == kind for _, k in rendered), f"{path.name} ({kind}) is never rendered: drop it"


def test_strict_crd_schema_catches_a_typo() -> None:
    schema = crd_schemas()[("keda.sh/v1alpha1", "ScaledObject")]
    bad = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [], "minReplicas": 1},
    }
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))
