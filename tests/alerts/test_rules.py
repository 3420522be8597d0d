"""The rule file: promtool-clean, every alert unit-tested firing and not firing, complete annotations, runbooks."""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from .conftest import ALERTS, PROMTOOL_TESTS, RULES, RUNBOOK_BASE, RUNBOOKS, alert_rules, load_rules, tool


def test_promtool_check_rules_is_clean() -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert PROMTOOL_TESTS, "no promtool unit test files in tests/alerts"
    result = subprocess.run(
        [tool("promtool"), "test", "rules", *map(str, PROMTOOL_TESTS)], capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_promtool_unit_tests_would_catch_a_wrong_expectation(tmp_path: Path) -> None:
    """Guard against a harness that passes vacuously: an alert that cannot fire, expected to fire, must fail."""
    bad = tmp_path / "bad.test.yaml"
    bad.write_text(
        textwrap.dedent(
            f"""
            rule_files: ["{RULES}"]
            evaluation_interval: 1m
            tests:
              - interval: 1m
                input_series:
                  - series: 'cpw_worker_ready{{namespace="cpw",pod="a"}}'
                    values: '1x10'
                alert_rule_test:
                  - eval_time: 9m
                    alertname: CPWNoReadyWorkers
                    exp_alerts:
                      - exp_labels: {{severity: critical, component: workers, namespace: cpw}}
            """
        )
    )
    result = subprocess.run([tool("promtool"), "test", "rules", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def _promtool_cases() -> list[dict]:
    cases = []
    for path in PROMTOOL_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


def _variants() -> set[tuple[str, str]]:
    return {(rule["alert"], rule["labels"]["severity"]) for rule in alert_rules()}


@pytest.mark.parametrize("alertname,severity", sorted(_variants()))
def test_every_alert_variant_is_tested_firing_and_not_firing(alertname: str, severity: str) -> None:
    cases = [case for case in _promtool_cases() if case["alertname"] == alertname]
    firing = [
        alert
        for case in cases
        for alert in case.get("exp_alerts") or []
        if alert["exp_labels"].get("severity") == severity
    ]
    quiet = [case for case in cases if not case.get("exp_alerts")]
    assert firing, f"no promtool test expects {alertname} ({severity}) to fire"
    assert quiet, f"no promtool test expects {alertname} not to fire"
    for alert in firing:
        assert alert.get("exp_annotations"), f"{alertname}: a firing expectation without its annotations"


def test_the_chart_ships_exactly_the_rule_file() -> None:
    """The chart globs alerts/*.rules.yaml into its PrometheusRule: nothing else may match."""
    assert sorted(p.name for p in ALERTS.glob("*.rules.yaml")) == [RULES.name]


def test_alert_names_and_labels() -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"CPW[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["labels"].get("component") in {"workers", "api", "broker", "autoscaling"}, name


# Per-pod state alerts whose value is always 0 (disconnected): their labels (pod) are the information.
STATE_ALERTS = {("CPWBrokerUnreachable", "warning")}


def test_annotations_carry_values_and_a_runbook_section() -> None:
    runbook = RUNBOOKS.read_text()
    headings = set(re.findall(r"^## (\S+)\s*$", runbook, flags=re.M))
    for rule in alert_rules():
        name, notes = rule["alert"], rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        if (name, rule["labels"]["severity"]) not in STATE_ALERTS:
            assert "$value" in notes["description"], f"{name}: the description does not show the value"
        assert "{{ $labels.namespace }}" in notes["description"], f"{name}: description does not say where"
        # GitHub's anchor for "## CPWName" is "#cpwname"
        assert notes["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}", name
        assert name in headings, f"alerts/runbooks.md has no section '## {name}'"
    # and no section for an alert that does not exist
    assert headings == {rule["alert"] for rule in alert_rules()}


def test_runbook_sections_say_what_to_check_and_do() -> None:
    sections = re.split(r"^## ", RUNBOOKS.read_text(), flags=re.M)[1:]
    for section in sections:
        name = section.splitlines()[0].strip()
        for part in ("**Meaning.**", "**Check.**", "**Act.**"):
            assert part in section, f"runbook {name}: missing {part}"


def test_alerts_only_use_recording_rules_that_exist() -> None:
    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    for rule in rules:
        for used in re.findall(r"\bcpw:[a-z0-9_]+:[a-z0-9_]+\b", rule["expr"]):
            assert used in recorded, f"{rule.get('alert') or rule.get('record')}: {used} is not recorded"
    # recording rules are evaluated before the alerts that read them (same group, earlier position)
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        seen: set[str] = set()
        for rule in group["rules"]:
            for used in re.findall(r"\bcpw:[a-z0-9_]+:[a-z0-9_]+\b", rule["expr"]):
                assert used in seen, f"{used} is used in group {group['name']} before it is recorded there"
            if "record" in rule:
                seen.add(rule["record"])
