"""skaffold.yaml: valid against the skaffold v4beta14 schema with every profile applied, and what it
deploys is what the chart and the images expect.

No skaffold binary here, so the test does what skaffold does with the file: applies a profile's JSON
patches (RFC 6902), validates the result, then computes the Helm values the release would get
(valuesFiles, setValues, setValueTemplates with the image templates filled in) and renders the umbrella
chart with them through the Helm engine.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from tests.chart.chartlib import render_values
from tests.images.dockerfile import DOCKERFILES, parse

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SKAFFOLD = ROOT / "skaffold.yaml"
SCHEMA = ROOT / "tests" / "schemas" / "skaffold" / "v4beta14.json"
PROFILES = [None, "dev", "ci"]
FAKE_TAG = "v0.1.0-dirty"


def _config() -> dict[str, Any]:
    return yaml.safe_load(SKAFFOLD.read_text())


def _pointer(doc: Any, path: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc, parts[-1]


def apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add / replace / remove, which is what skaffold profiles' `patches` are."""
    config = copy.deepcopy(config)
    for patch in patches:
        parent, key = _pointer(config, patch["path"])
        op = patch["op"]
        if isinstance(parent, list):
            index = len(parent) if key == "-" else int(key)
            if op == "add":
                parent.insert(index, copy.deepcopy(patch["value"]))
            elif op == "replace":
                parent[index] = copy.deepcopy(patch["value"])
            elif op == "remove":
                del parent[index]
            else:
                raise AssertionError(f"unsupported op {op}")
        else:
            if op in ("replace", "remove"):
                assert key in parent, f"{op} {patch['path']}: nothing there"
            if op == "remove":
                del parent[key]
            elif op in ("add", "replace"):
                parent[key] = copy.deepcopy(patch["value"])
            else:
                raise AssertionError(f"unsupported op {op}")
    return config


def effective(profile: str | None) -> dict[str, Any]:
    config = _config()
    profiles = {p["name"]: p for p in config.get("profiles", [])}
    if profile is not None:
        overlay = profiles[profile]
        assert set(overlay) <= {"name", "activation", "patches"}, "profiles use patches only (exact semantics)"
        config = apply_patches(config, overlay.get("patches", []))
    config.pop("profiles", None)
    return config


def template_name(image: str) -> str:
    return re.sub(r"[/\-.]", "_", image)


def helm_values(config: dict[str, Any]) -> dict[str, Any]:
    """The values skaffold passes to the release: valuesFiles, then --set, then the image templates."""
    release = config["deploy"]["helm"]["releases"][0]
    values: dict[str, Any] = {}

    def merge(base: dict, over: dict) -> dict:
        for k, v in over.items():
            base[k] = merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base

    for path in release.get("valuesFiles", []):
        merge(values, yaml.safe_load((ROOT / path).read_text()) or {})
    for key, value in release.get("setValues", {}).items():
        merge(values, helm_python.parse_set_string(f"{key}={value}"))
    known = {template_name(a["image"]): a["image"] for a in config["build"]["artifacts"]}
    for key, template in release.get("setValueTemplates", {}).items():
        m = re.fullmatch(r"\{\{\s*\.IMAGE_(REPO|TAG)_(\w+)\s*\}\}", template)
        assert m, f"{key}: {template}"
        image = known[m[2]]
        merge(values, helm_python.parse_set_string(f"{key}={image if m[1] == 'REPO' else FAKE_TAG}"))
    return values


def test_schema_is_the_recorded_copy() -> None:
    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    assert digest in (SCHEMA.parent / "SOURCES.md").read_text(), "the schema differs from the one SOURCES.md names"


@pytest.mark.parametrize("profile", PROFILES)
def test_valid_against_the_v4beta14_schema(profile: str | None) -> None:
    config = _config()
    assert config["apiVersion"] == "skaffold/v4beta14"
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    target = config if profile is None else effective(profile)
    errors = sorted(validator.iter_errors(target), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors)


def test_a_typo_is_caught_by_the_schema() -> None:
    broken = _config()
    broken["deploy"]["helm"]["releases"][0]["setValueTemplate"] = {}
    assert not jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).is_valid(broken)


def test_both_images_built_with_docker_from_their_dockerfiles() -> None:
    artifacts = {a["docker"]["dockerfile"]: a for a in _config()["build"]["artifacts"]}
    assert set(artifacts) == {"worker/Dockerfile", "api-adapter/Dockerfile"}
    for dockerfile, artifact in artifacts.items():
        assert artifact["context"] == "."
        assert artifact["docker"]["target"] == "runtime"
        stages = [s.name for s in parse(ROOT / dockerfile).stages]
        assert "runtime" in stages and "dev" in stages
    assert {str(p.relative_to(ROOT)) for p in DOCKERFILES.values()} == set(artifacts)


@pytest.mark.parametrize("profile", [None, "ci"])
def test_sync_and_the_dev_image_only_in_the_dev_profile(profile: str | None) -> None:
    for artifact in effective(profile)["build"]["artifacts"]:
        assert "sync" not in artifact
        assert artifact["docker"]["target"] == "runtime"


def test_dev_profile_syncs_python_sources_into_the_writable_tmp() -> None:
    config = effective("dev")
    for artifact in config["build"]["artifacts"]:
        assert artifact["docker"]["target"] == "dev"
        rules = artifact["sync"]["manual"]
        for rule in rules:
            assert rule["dest"] == "/tmp/src" and rule["src"].endswith("*.py")
            package = rule["src"][len(rule["strip"]) :].split("/")[0]
            assert (ROOT / rule["strip"] / package / "__init__.py").exists(), rule
        dockerfile = parse(ROOT / artifact["docker"]["dockerfile"])
        assert dockerfile.stage("dev").env()["PYTHONPATH"] == "/tmp/src"
    assert _config()["profiles"][0]["activation"] == [{"command": "dev"}]


@pytest.mark.parametrize("profile", PROFILES)
def test_the_release_renders_with_the_profiles_values(profile: str | None) -> None:
    config = effective(profile)
    release = config["deploy"]["helm"]["releases"][0]
    assert (ROOT / release["chartPath"] / "Chart.yaml").exists()
    values = helm_values(config)
    if profile is None:  # the default install needs a tokens Secret made by hand, like `helm install`
        values.setdefault("api", {}).setdefault("auth", {})["tokens"] = {"t": "tenant"}
    docs = render_values(values, name=release["name"], namespace=release["namespace"])
    images = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    assert images == {
        "cpw-worker": f"controlplane-workers/worker:{FAKE_TAG}",
        "cpw-api": f"controlplane-workers/api-adapter:{FAKE_TAG}",
    }
    for d in docs:
        if d["kind"] == "Deployment":
            container = d["spec"]["template"]["spec"]["containers"][0]
            assert container["imagePullPolicy"] == "IfNotPresent"
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]], "sync target /tmp/src is writable"

    # port-forward targets exist with those ports
    services = {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for d in docs if d["kind"] == "Service"}
    for forward in config["portForward"]:
        assert forward["resourceType"] == "service" and forward["namespace"] == release["namespace"]
        assert forward["port"] in services[forward["resourceName"]], forward
    assert {(f["resourceName"], f["port"]) for f in config["portForward"]} >= {
        ("cpw-api", 8000),
        ("cpw-api", 8001),
    }

    if profile in ("dev", "ci"):
        cluster = [d for d in docs if d["kind"] == "RabbitmqCluster"]
        assert len(cluster) == 1 and cluster[0]["spec"]["replicas"] == 1
        assert not [d for d in docs if d["kind"] == "ScaledObject"], "KEDA is off in dev and ci"
        assert [d for d in docs if d["kind"] == "Pod" and "helm.sh/hook" in d["metadata"].get("annotations", {})]


def test_ci_profile_runs_helm_test_after_the_deploy() -> None:
    config = effective("ci")
    release = config["deploy"]["helm"]["releases"][0]
    assert release["wait"] is True, "helm test needs the pods ready"
    commands = [h["host"]["command"] for h in config["deploy"]["helm"]["hooks"]["after"]]
    assert ["helm", "test", release["name"], "--namespace", release["namespace"]] == commands[0][:5]
    assert "hooks" not in effective(None)["deploy"]["helm"] and "hooks" not in effective("dev")["deploy"]["helm"]
