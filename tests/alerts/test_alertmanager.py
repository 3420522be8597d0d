"""alerts/alertmanager.example.yaml: valid for amtool, routes by severity, and a real Alertmanager inhibits a
warning while the critical of the same alert name and namespace fires."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .conftest import ALERTMANAGER_EXAMPLE, alert_rules, tool


def test_amtool_check_config() -> None:
    result = subprocess.run(
        [tool("amtool"), "check-config", str(ALERTMANAGER_EXAMPLE)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _route(*labels: str) -> str:
    result = subprocess.run(
        [tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}", *labels],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("severity,receiver", [("critical", "page"), ("warning", "ticket")])
def test_routes_by_severity(severity: str, receiver: str) -> None:
    assert _route(f"severity={severity}", "alertname=CPWJobFailureRatioHigh", "namespace=cpw") == receiver


def test_every_severity_the_rules_use_has_a_route() -> None:
    severities = {rule["labels"]["severity"] for rule in alert_rules()}
    assert {_route(f"severity={s}") for s in severities} == {"page", "ticket"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = open(tmp_path / "alertmanager.log", "wb")
    process = subprocess.Popen(
        [
            tool("prometheus-alertmanager"),
            f"--config.file={ALERTMANAGER_EXAMPLE}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"alertmanager did not start: {(tmp_path / 'alertmanager.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        return json.load(response)


def test_a_critical_inhibits_the_warning_of_the_same_alert_and_namespace(alertmanager: str) -> None:
    now = datetime.now(UTC)
    window = {"startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}

    def alert(severity: str, namespace: str) -> dict:
        return {
            "labels": {
                "alertname": "CPWJobFailureRatioHigh",
                "severity": severity,
                "namespace": namespace,
                "operation": "create",
            },
            **window,
        }

    posted = [alert("critical", "cpw"), alert("warning", "cpw"), alert("warning", "other")]
    request = urllib.request.Request(
        f"{alertmanager}/api/v2/alerts",
        data=json.dumps(posted).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200

    def state() -> dict[tuple[str, str], dict]:
        return {(a["labels"]["severity"], a["labels"]["namespace"]): a["status"] for a in _alerts(alertmanager)}

    deadline = time.monotonic() + 20  # inhibition is evaluated when the alerts are listed; wait for ingestion
    while True:
        current = state()
        if len(current) == 3 and current[("warning", "cpw")]["state"] == "suppressed":
            break
        assert time.monotonic() < deadline, current
        time.sleep(0.2)
    assert current[("warning", "cpw")]["inhibitedBy"]
    assert current[("critical", "cpw")]["state"] == "active"
    assert current[("warning", "other")]["state"] == "active"  # another namespace's warning still reaches a ticket
