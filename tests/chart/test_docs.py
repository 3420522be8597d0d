"""docs/chart.md's values tables and every chart's README.md are generated from the values files' `# --`
comments and must be current; a chart's README must stand alone in the packaged chart (no link leaves it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chart import docs_gen

pytestmark = pytest.mark.timeout(30)

CHARTS = docs_gen.chart_dirs()


def _chart_id(path: Path) -> str:
    return path.relative_to(docs_gen.CHARTS).as_posix()


def _markdown_in_charts() -> list[Path]:
    """Markdown under charts/, except through the files/ symlinks: those are the repository's alerts/ and
    dashboards/, whose .md files .helmignore keeps out of the package."""
    root = docs_gen.CHARTS.resolve()
    return sorted(p for p in docs_gen.CHARTS.rglob("*.md") if p.resolve().is_relative_to(root))


def _owning_chart(path: Path) -> Path:
    return next(d for d in path.parents if (d / "Chart.yaml").exists())


def _links_leaving(markdown: Path, chart: Path) -> list[str]:
    """Relative links of `markdown` that point outside `chart` (lexically: files/ symlinks count as inside)."""
    out = []
    for link in docs_gen.relative_links(markdown.read_text()):
        target = Path(os.path.normpath(markdown.parent / link.partition("#")[0]))
        if not target.is_relative_to(chart):
            out.append(link)
    return out


def test_values_tables_are_current() -> None:
    text = docs_gen.DOC.read_text()
    assert docs_gen.render(text) == text, "docs/chart.md is stale: run make docs"


def test_every_chart_ships_a_readme() -> None:
    found = {c.relative_to(docs_gen.CHART).as_posix() for c in CHARTS}
    assert found >= {".", "charts/worker", "charts/api-adapter", "charts/common-lib"}
    for chart in CHARTS:
        assert (chart / "README.md").is_file(), f"{_chart_id(chart)} has no README.md"


@pytest.mark.parametrize("chart", CHARTS, ids=_chart_id)
def test_chart_readme_is_current(chart: Path) -> None:
    text = (chart / "README.md").read_text()
    assert docs_gen.render_readme(chart, text) == text, f"{_chart_id(chart)}/README.md is stale: run make docs"


@pytest.mark.parametrize("chart", CHARTS, ids=_chart_id)
def test_chart_readme_has_a_values_table_exactly_when_the_chart_has_values(chart: Path) -> None:
    text = (chart / "README.md").read_text()
    has_values = (chart / "values.yaml").exists()
    assert ("<!-- values:start -->" in text) == has_values
    assert ("| Key | Type | Default | Description |" in text) == has_values


def test_a_stale_readme_is_regenerated() -> None:
    readme = docs_gen.CHART / "charts" / "worker" / "README.md"
    text = readme.read_text()
    stale = text.replace("| `replicaCount` | integer | `2` |", "| `replicaCount` | integer | `1` |")
    assert stale != text
    assert docs_gen.render_readme(readme.parent, stale) == text


@pytest.mark.parametrize("markdown", _markdown_in_charts(), ids=_chart_id)
def test_chart_docs_link_nothing_outside_their_chart(markdown: Path) -> None:
    chart = _owning_chart(markdown)
    assert not _links_leaving(markdown, chart), f"{_chart_id(markdown)} links outside {_chart_id(chart)}"
    for link in docs_gen.relative_links(markdown.read_text()):
        target = markdown.parent / link.partition("#")[0]
        assert target.exists(), f"{_chart_id(markdown)}: broken link {link}"


def test_link_check_catches_links_out_of_the_chart(tmp_path: Path) -> None:
    chart = tmp_path / "umbrella" / "charts" / "sub"
    chart.mkdir(parents=True)
    readme = chart / "README.md"
    readme.write_text(
        "[in](templates/x.yaml) [up](../../README.md) [abs](/etc/passwd) [web](https://example.com) [a](#values)\n"
        '`[code](../ignored.md)`\n\n[ref]: ../other/README.md\n<a href="../x.md">x</a>\n'
    )
    assert _links_leaving(readme, chart) == ["../../README.md", "/etc/passwd", "../other/README.md", "../x.md"]


def test_parser_reads_type_annotations_and_default_overrides(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "# Header comment, not a description.\n\n"
        "# -- (int) Replicas; continued\n# on a second line.\nreplicas: null\n"
        "nested:\n  # -- Computed at install.\n  # @default -- the release name\n  key: abc\n"
        "undocumented: 1\n"
    )
    assert docs_gen.documented_values(values) == [
        docs_gen.ValueDoc("replicas", "Replicas; continued on a second line.", "", "int"),
        docs_gen.ValueDoc("nested.key", "Computed at install.", "the release name", ""),
    ]
    schema = {"properties": {"replicas": {"type": "string"}, "nested": {"properties": {"key": {"enum": ["abc"]}}}}}
    rows = docs_gen.table(values, "", schema).splitlines()
    assert rows[2] == "| `replicas` | int | `null` | Replicas; continued on a second line. |", "annotation wins"
    assert rows[3] == '| `nested.key` | one of `"abc"` | the release name | Computed at install. |'
    assert docs_gen.table(values, "x.").splitlines()[3].startswith("| `x.nested.key` | string |"), "no schema"


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


def test_chart_readme_names_the_doc_without_linking_out() -> None:
    readme = (docs_gen.CHART / "README.md").read_text()
    assert "docs/chart.md" in readme
    assert "](../" not in readme
    for needle in ("## Prerequisites", "## Install", "helm install", "## Values", "KEDA"):
        assert needle in readme, needle
