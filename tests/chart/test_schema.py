"""values.schema.json on the umbrella and each subchart is current, and every value is documented with a
helm-docs `# --` comment (on the key or on an enclosing key)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.chart import schema_gen
from tests.chart.chartlib import CHART

pytestmark = pytest.mark.timeout(30)

VALUES_FILES = [
    CHART / "values.yaml",
    CHART / "charts" / "worker" / "values.yaml",
    CHART / "charts" / "api-adapter" / "values.yaml",
]
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?P<rest>.*)$")


def test_committed_schemas_match_the_generator() -> None:
    for key, text in schema_gen.render_all().items():
        path = schema_gen.SCHEMA_FILES[key]
        assert path.read_text() == text, f"{path} is stale: run python tests/chart/schema_gen.py"
        json.loads(text)


def undocumented(path: Path) -> list[str]:
    """Leaf keys with no `# --` comment on themselves or an ancestor."""
    lines = path.read_text().splitlines()
    missing: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment_block: list[str] = []
    for n, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("#"):
            comment_block.append(stripped)
            continue
        m = KEY.match(line)
        if not m or stripped.startswith("- "):
            if stripped:
                comment_block = []
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = any(c.startswith("# --") for c in comment_block)
        inherited = any(d for _, _, d in stack)
        comment_block = []
        rest = m["rest"].strip()
        nxt = next((x for x in lines[n + 1 :] if x.strip() and not x.strip().startswith("#")), "")
        nxt_indent = len(nxt) - len(nxt.lstrip())
        is_leaf = bool(rest) or not nxt or nxt_indent <= indent and not nxt.strip().startswith("- ")
        if is_leaf and not (documented or inherited):
            missing.append(".".join([k for _, k, _ in stack] + [m["key"]]) + f" (line {n + 1})")
        stack.append((indent, m["key"], documented))
    return missing


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: str(p.relative_to(CHART)))
def test_every_value_is_documented(path: Path) -> None:
    assert not undocumented(path), undocumented(path)


def test_each_chart_has_a_strict_schema() -> None:
    for path in [
        CHART / "values.schema.json",
        CHART / "charts" / "worker" / "values.schema.json",
        CHART / "charts" / "api-adapter" / "values.schema.json",
    ]:
        schema = json.loads(path.read_text())
        assert schema["additionalProperties"] is False, path
        assert "global" in schema["properties"], "subcharts receive `global`"
