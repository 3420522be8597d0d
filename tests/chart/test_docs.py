"""docs/chart.md's values tables are generated from the values files' `# --` comments and must be current."""

from __future__ import annotations

import pytest

from tests.chart import docs_gen

pytestmark = pytest.mark.timeout(30)


def test_values_tables_are_current() -> None:
    text = docs_gen.DOC.read_text()
    assert docs_gen.render(text) == text, "docs/chart.md is stale: run python tests/chart/docs_gen.py"


def test_doc_covers_what_the_issue_asks() -> None:
    text = docs_gen.DOC.read_text()
    for needle in (
        "## Prerequisites",
        "ScaledJob",
        "long-running",
        "protocol: http",
        "queueName",
        "terminationGracePeriodSeconds",
        "default-user",
        "connection_string",
        "checkov",
    ):
        assert needle in text, needle


def test_chart_readme_points_to_the_doc() -> None:
    readme = (docs_gen.CHART / "README.md").read_text()
    assert "docs/chart.md" in readme
