"""Shared paths and helpers for the alert tests (promtool, amtool, a real Alertmanager)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
RULES = ALERTS / "controlplane-workers.rules.yaml"
RUNBOOKS = ALERTS / "runbooks.md"
ALERTMANAGER_EXAMPLE = ALERTS / "alertmanager.example.yaml"
PROMTOOL_TESTS = sorted(Path(__file__).parent.glob("*.test.yaml"))
# The prefix every runbook_url starts with; a fork replaces it (documented in the rule file's header).
RUNBOOK_BASE = "https://github.com/controlplane-workers/controlplane-workers/blob/main/alerts/runbooks.md"


def tool(name: str) -> str:
    """A Debian tool the Makefile installs (`make system-deps`); missing means the setup is broken."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run `make system-deps` (Debian packages prometheus, prometheus-alertmanager)"
        )
    return path


def load_rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict]:
    return [rule for rule in load_rules() if "alert" in rule]
