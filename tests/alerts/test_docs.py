"""docs/metrics.md names every metric the services export, every recording rule and every alert."""

from __future__ import annotations

from .conftest import ROOT, alert_rules, load_rules
from .test_metric_names import RABBITMQ_DETAILED, api_metrics, projector_metrics, worker_metrics

DOC = ROOT / "docs" / "metrics.md"


def _base(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_exported_metric_is_documented() -> None:
    text = DOC.read_text()
    for name in {**worker_metrics(), **api_metrics(), **projector_metrics()}:
        if name.endswith("_created") or name.startswith(("process_", "python_")):
            continue
        assert f"`{name}`" in text or f"`{_base(name)}`" in text, f"docs/metrics.md does not describe {name}"


def test_rules_and_scrape_settings_are_documented() -> None:
    text = DOC.read_text()
    for rule in load_rules():
        assert f"`{rule.get('alert') or rule['record']}`" in text
    assert RABBITMQ_DETAILED.split("?")[0] in text
    for family in ("queue_coarse_metrics", "queue_consumer_count"):
        assert family in text
    assert {r["alert"] for r in alert_rules()}
