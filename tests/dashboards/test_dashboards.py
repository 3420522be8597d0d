"""The dashboards: committed JSON == generated, variables, units, thresholds, descriptions, valid PromQL."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .dashboards import DASHBOARDS, GENERATOR, ROOT, committed, generator, panels, queries


def test_committed_dashboards_are_what_the_code_generates() -> None:
    generated = generator().generate()
    on_disk = {path.name: path.read_text() for path in DASHBOARDS.glob("*.json")}
    assert set(on_disk) == set(generated), "dashboards/*.json and the generator's list differ"
    for name, text in generated.items():
        assert on_disk[name] == text, f"dashboards/{name} is stale: run `make dashboards`"


def test_generator_check_mode(tmp_path: Path) -> None:
    """`--check` is what CI can call; it fails on a stale file and passes on fresh ones."""
    run = [str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else "python3", str(GENERATOR)]
    assert subprocess.run([*run, "--out", str(tmp_path)], capture_output=True, timeout=60).returncode == 0
    assert subprocess.run([*run, "--check", "--out", str(tmp_path)], capture_output=True, timeout=60).returncode == 0
    (tmp_path / "fleet-overview.json").write_text("{}")
    stale = subprocess.run([*run, "--check", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1 and "fleet-overview.json" in stale.stderr


def test_the_two_dashboards_exist() -> None:
    titles = {d["uid"]: d["title"] for d in committed().values()}
    assert set(titles) == {"cpw-fleet-overview", "cpw-worker-detail"}


@pytest.mark.parametrize("name", sorted(committed()))
def test_variables(name: str) -> None:
    dashboard = committed()[name]
    found = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= set(found)
    assert found["datasource"]["type"] == "datasource" and found["datasource"]["query"] == "prometheus"
    for variable in found.values():
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    if name == "worker-detail.json":
        assert "pod" in found


@pytest.mark.parametrize("name", sorted(committed()))
def test_every_panel_is_described_with_units_and_thresholds(name: str) -> None:
    dashboard = committed()[name]
    ids = []
    for panel in panels(dashboard):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        title = panel["title"]
        assert panel.get("description", "").strip(), f"{title}: no description"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{title}: no unit"
        assert defaults.get("thresholds", {}).get("steps"), f"{title}: no thresholds"
        assert 0 < panel["gridPos"]["w"] <= 24, title
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs) and all(refs), f"{title}: refIds {refs}"
        for target in panel["targets"]:
            assert "$namespace" in target["expr"], f"{title}: query not scoped to $namespace"
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_fleet_overview_covers_the_issue() -> None:
    """The panels issue 5 asks for on the fleet overview, found by the metric each one must read."""
    text = "\n".join(expr for _, expr in queries(committed()["fleet-overview.json"]))
    for needed in [
        "cpw_worker_jobs_total",  # throughput by outcome, success ratio
        "cpw_worker_job_duration_seconds_bucket",  # p50/p95/p99 duration
        "cpw_worker_queue_wait_seconds_bucket",  # queue wait
        "rabbitmq_detailed_queue_messages_ready",
        "rabbitmq_detailed_queue_messages_unacked",  # depth
        "rabbitmq_detailed_queue_messages{",  # DLQ
        "kube_horizontalpodautoscaler_status_desired_replicas",  # KEDA desired replicas
        "cpw_worker_jobs_in_flight",
        "cpw_worker_capacity",  # saturation
        "cpw_api_requests_total",
        "cpw_api_request_duration_seconds_bucket",  # API rate / latency / errors
    ]:
        assert needed in text, needed
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(cpw_worker_job_duration_seconds_bucket" in text


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (variables substituted) as a recording rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make system-deps`")
    rules = []
    for name, dashboard in committed().items():
        for index, (title, expr) in enumerate(queries(dashboard)):
            assert "$" not in expr.replace("$1", ""), f"{name} / {title}: unsubstituted variable in {expr}"
            rules.append({"record": f"dashboard:{re.sub(r'[^a-z]', '_', name[:-5])}:q{index}", "expr": expr})
    path = tmp_path / "queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
