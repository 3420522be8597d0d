"""checkov (--framework kubernetes) on the rendered manifests: 0 failed checks for the default and the production
value sets; every skipped check is skipped in the chart itself (a checkov.io/skipN annotation with its reason).

checkov has heavy pins, so it lives in its own venv:
    python3 -m venv .tools/checkov && .tools/checkov/bin/pip install checkov
The test finds it there or on PATH, and skips (saying so) when it is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.chart.chartlib import ROOT, render_set, strip, to_yaml_stream

pytestmark = pytest.mark.timeout(240)

CHECKED_SETS = ["default", "production", "postgresql-cluster"]


def checkov_binary() -> str | None:
    local = ROOT / ".tools" / "checkov" / "bin" / "checkov"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("checkov")


@pytest.fixture(scope="module")
def checkov() -> str:
    binary = checkov_binary()
    if not binary:
        pytest.skip("checkov not installed: python3 -m venv .tools/checkov && .tools/checkov/bin/pip install checkov")
    return binary


def run_checkov(binary: str, manifests: Path) -> dict:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false", "LOG_LEVEL": "ERROR"}
    proc = subprocess.run(
        [binary, "--framework", "kubernetes", "-f", str(manifests), "-o", "json", "--skip-download", "--compact"],
        capture_output=True,
        text=True,
        env=env,
        timeout=220,
        check=False,
    )
    assert proc.stdout.strip(), f"checkov printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    if isinstance(report, list):
        report = next(r for r in report if r.get("check_type") == "kubernetes")
    return report


@pytest.mark.parametrize("value_set", CHECKED_SETS)
def test_checkov_has_no_failed_checks(checkov: str, value_set: str, tmp_path: Path) -> None:
    docs = render_set(value_set)
    manifests = tmp_path / f"{value_set}.yaml"
    manifests.write_text(to_yaml_stream(docs))
    report = run_checkov(checkov, manifests)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['check_name']} on {c['resource']}" for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, "\n".join(failed)
    assert summary["passed"] > 100, summary
    assert summary["parsing_errors"] == 0, summary

    # every skip comes from the chart: the object carries checkov.io/skipN: <check>=<reason>
    annotated: dict[str, dict[str, str]] = {}
    for d in docs:
        body = strip(d)
        key = f"{body['kind']}.{body['metadata'].get('namespace', 'default')}.{body['metadata']['name']}"
        for k, v in (body["metadata"].get("annotations") or {}).items():
            if k.startswith("checkov.io/skip"):
                check, _, reason = v.partition("=")
                annotated.setdefault(key, {})[check] = reason
    for c in report["results"].get("skipped_checks", []):
        reason = annotated.get(c["resource"], {}).get(c["check_id"])
        assert reason and len(reason) > 20, f"{c['check_id']} on {c['resource']} skipped without a reason in the chart"
