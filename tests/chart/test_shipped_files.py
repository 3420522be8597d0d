"""The chart ships alerts/*.rules.yaml and dashboards/*.json without hand-kept copies, and a README.md per chart.

Mechanism: charts/controlplane-workers/files/alerts and files/dashboards are symlinks to the repository's
alerts/ and dashboards/. Helm's loader follows them (it logs "found symbolic link in path") and `helm package`
stores the linked files' content, so the packaged chart carries exactly what is in the source folders.
These tests prove it on the packaged archive and on the rendered objects. Each chart's README.md must be in the
archive with every relative link resolving inside it, so the packaged chart documents itself.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile

import helm_python
import pytest
import yaml

from tests.chart import docs_gen
from tests.chart.chartlib import CHART, RELEASE, ROOT, find, one, render_values

pytestmark = pytest.mark.timeout(60)

ALERTS = ROOT / "alerts"
DASHBOARDS = ROOT / "dashboards"
MONITORING_ON = {"monitoring": {"prometheusRule": {"enabled": True}, "dashboards": {"enabled": True}}}


def source_rules() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ALERTS.glob("*.rules.yaml"))}


def source_dashboards() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(DASHBOARDS.glob("*.json"))}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Path -> content of every file in the `helm package` archive, packaged once for the module."""
    archive = helm_python.package(CHART, destination=tmp_path_factory.mktemp("package"))
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_files_are_symlinks_to_the_sources() -> None:
    for name, target in (("alerts", ALERTS), ("dashboards", DASHBOARDS)):
        link = CHART / "files" / name
        assert link.is_symlink(), f"{link} must be a symlink, not a copy"
        assert not os.path.isabs(os.readlink(link)), "relative, so it works in any clone"
        assert link.resolve() == target.resolve()
    assert source_rules(), "alerts/ holds no *.rules.yaml"
    assert source_dashboards(), "dashboards/ holds no *.json"


def test_packaged_chart_carries_exactly_the_source_files(shipped: dict[str, bytes]) -> None:
    prefix = "controlplane-workers/files/"
    rules = {
        n[len(prefix + "alerts/") :]: b
        for n, b in shipped.items()
        if n.startswith(prefix + "alerts/") and n.endswith(".rules.yaml")
    }
    boards = {
        n[len(prefix + "dashboards/") :]: b
        for n, b in shipped.items()
        if n.startswith(prefix + "dashboards/") and n.endswith(".json")
    }
    assert rules == source_rules()
    assert boards == source_dashboards()
    assert not [n for n in shipped if n.startswith(prefix + "alerts/") and n.endswith(".md")], "runbooks stay out"


def test_packaged_chart_ships_each_charts_readme(shipped: dict[str, bytes]) -> None:
    for chart in docs_gen.chart_dirs():
        name = posixpath.normpath(f"{CHART.name}/{chart.relative_to(CHART).as_posix()}/README.md")
        assert shipped.get(name) == (chart / "README.md").read_bytes(), f"{name} missing from the package"


def test_packaged_readmes_link_only_to_packaged_files(shipped: dict[str, bytes]) -> None:
    readmes = [n for n in shipped if posixpath.basename(n) == "README.md"]
    assert len(readmes) >= 4
    for name in readmes:
        for link in docs_gen.relative_links(shipped[name].decode()):
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), link.partition("#")[0]))
            assert target in shipped or any(n.startswith(target + "/") for n in shipped), f"{name}: {link}"


def test_prometheus_rule_holds_every_source_group() -> None:
    docs = render_values(MONITORING_ON)
    rule = one(docs, "PrometheusRule", f"{RELEASE}-alerts")
    groups = [g for text in source_rules().values() for g in (yaml.safe_load(text) or {}).get("groups", [])]
    assert rule["spec"]["groups"] == groups


def test_one_dashboard_configmap_per_source_dashboard() -> None:
    docs = render_values(MONITORING_ON)
    cms = [d for d in find(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    shipped = {k: json.loads(v) for cm in cms for k, v in cm["data"].items()}
    assert shipped == {k: json.loads(v) for k, v in source_dashboards().items()}
    for cm in cms:
        assert cm["metadata"]["annotations"]["grafana_folder"] == "controlplane-workers"
    assert all(len(json.dumps(cm["data"])) < 1_000_000 for cm in cms), "a ConfigMap holds at most 1 MiB"


def test_source_rule_files_are_plain_prometheus_rule_files() -> None:
    for name, text in source_rules().items():
        doc = yaml.safe_load(text)
        assert set(doc) == {"groups"}, f"{name}: top level must be `groups:` only"
        for g in doc["groups"]:
            assert g["name"] and g["rules"], name
