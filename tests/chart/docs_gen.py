"""Regenerates the values tables of docs/chart.md and of every chart's README.md from the charts' `# --`
comments (helm-docs style).

`python tests/chart/docs_gen.py` (= `make docs`) rewrites only the blocks between `<!-- NAME:start -->` and
`<!-- NAME:end -->`; the prose around them is hand-written. docs/chart.md holds `values:umbrella`,
`values:workers` and `values:api` (keys as set through the umbrella). Each chart's README.md holds `chart`
(version and subcharts from Chart.yaml) and, when the chart has a values.yaml, `values` (the chart's own keys,
types from its values.schema.json). tests/chart/test_docs.py fails when any block is stale.

Comment syntax, as helm-docs: `# -- (type) description` (the `(type)` annotation is optional and wins over the
derived type), continued on the following `#` lines; `# @default -- text` replaces the shown default.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
CHART = CHARTS / "controlplane-workers"
DOC = ROOT / "docs" / "chart.md"
TABLES = {
    "umbrella": (CHART / "values.yaml", ""),
    "workers": (CHART / "charts" / "worker" / "values.yaml", "workers."),
    "api": (CHART / "charts" / "api-adapter" / "values.yaml", "api."),
}
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?P<rest>.*)$")
ANNOTATED_TYPE = re.compile(r"^\((?P<type>[^)]+)\)\s*")
DEFAULT = "@default --"
HEADER = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]


class ValueDoc(NamedTuple):
    """One documented key: what a table row needs besides the value itself."""

    key: str
    description: str
    default: str  # the `# @default --` text; "" shows the value
    type: str  # the `# -- (type)` annotation; "" derives the type


def _value_doc(key: str, comment: list[str]) -> ValueDoc | None:
    """The `# --` part of the comment above `key` ('#' stripped), or None: keys without it stay undocumented."""
    start = next((n for n, c in enumerate(comment) if c.startswith("--")), None)
    if start is None:
        return None
    lines = [comment[start][2:].strip()] + comment[start + 1 :]
    defaults = [line[len(DEFAULT) :].strip() for line in lines if line.startswith(DEFAULT)]
    description = " ".join(line for line in lines if not line.startswith(DEFAULT)).strip()
    annotated = ANNOTATED_TYPE.match(description)
    if annotated:
        description = description[annotated.end() :]
    return ValueDoc(key, description, defaults[-1] if defaults else "", annotated["type"] if annotated else "")


def documented_values(path: Path) -> list[ValueDoc]:
    """Every key of a values file carrying a `# --` comment, dotted, in file order: the one parser of the docs."""
    out: list[ValueDoc] = []
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        m = KEY.match(line)
        if not m or stripped.startswith("- "):
            if stripped:
                comment = []
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        doc = _value_doc(".".join(k for _, k in stack), comment)
        if doc:
            out.append(doc)
        comment = []
    return out


def _lookup(values: dict, dotted: str) -> object:
    cur: object = values
    for part in dotted.split("."):
        cur = cur[part]  # type: ignore[index]
    return cur


def _type(v: object) -> str:
    return {dict: "object", list: "list", bool: "bool", int: "int", float: "float", str: "string", type(None): "null"}[
        type(v)
    ]


def schema_node(schema: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    """The values.schema.json node of a dotted key, or None where the schema does not describe it."""
    node: dict[str, Any] | None = schema
    for part in dotted.split("."):
        if node is None:
            return None
        node = (node.get("properties") or {}).get(part)
    return node


def schema_type(node: dict[str, Any] | None, value: Any) -> str:
    """The type Helm enforces (enum, type list, anyOf/oneOf), falling back to the default value's type."""
    if node is None:
        return _type(value)
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    kind = node.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind:
        return str(kind)
    if "anyOf" in node or "oneOf" in node:
        kinds = [a.get("type") for a in node.get("anyOf", node.get("oneOf", [])) if a.get("type")]
        return " or ".join(str(k) for k in kinds) or _type(value)
    return _type(value)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"


def table(path: Path, prefix: str, schema: dict[str, Any] | None = None) -> str:
    """The Key | Type | Default | Description table of a values file; with `schema`, types are the schema's."""
    values = yaml.safe_load(path.read_text())
    rows = list(HEADER)
    for doc in documented_values(path):
        value = _lookup(values, doc.key)
        derived = schema_type(schema_node(schema, doc.key), value) if schema is not None else _type(value)
        shown = doc.default or f"`{json.dumps(value)}`"
        rows.append(_row([f"`{prefix}{doc.key}`", doc.type or derived, shown, doc.description]))
    return "\n".join(rows)


def replace_block(text: str, name: str, body: str, where: Path) -> str:
    """`text` with the block between the `name` markers replaced by `body`; missing markers are an error."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    assert pattern.search(text), f"{where} lacks the markers {start} / {end}"
    return pattern.sub(lambda _m: f"{start}\n{body}\n{end}", text)


def render(doc: str) -> str:
    """docs/chart.md with its three tables regenerated (types of the default values, keys as through the umbrella)."""
    for name, (path, prefix) in TABLES.items():
        doc = replace_block(doc, f"values:{name}", table(path, prefix), DOC)
    return doc


def chart_dirs() -> list[Path]:
    """Every chart under charts/ (the umbrella and its unpacked subcharts): each ships its own README.md."""
    found = (p.parent for p in CHARTS.rglob("Chart.yaml"))
    return sorted(d for d in found if d.resolve().is_relative_to(CHARTS.resolve()))


def chart_block(chart: Path) -> str:
    """Version facts and subcharts from Chart.yaml, so a README never shows a stale version or dependency."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    facts = [f"Version: `{meta['version']}`", f"Type: `{meta.get('type', 'application')}`"]
    for key, label in (("appVersion", "AppVersion"), ("kubeVersion", "Kubernetes")):
        if key in meta:
            facts.append(f"{label}: `{meta[key]}`")
    lines = [", ".join(facts)]
    if meta.get("home"):
        lines += ["", f"Homepage: <{meta['home']}>"]
    dependencies = meta.get("dependencies") or []
    if dependencies:
        lines += ["", "| Dependency | Values key | Version | Enabled by |", "| --- | --- | --- | --- |"]
        lines += [_dependency_row(chart, dep) for dep in dependencies]
    return "\n".join(lines)


def _dependency_row(chart: Path, dep: dict[str, Any]) -> str:
    """A dependency unpacked inside this chart links to its README; others (file://.. repositories) are named."""
    readme = chart / "charts" / dep["name"] / "README.md"
    name = f"[{dep['name']}](charts/{dep['name']}/README.md)" if readme.exists() else f"`{dep['name']}`"
    key = f"`{dep.get('alias', dep['name'])}`"
    return _row([name, key, f"`{dep['version']}`", f"`{dep['condition']}`" if dep.get("condition") else "always"])


def render_readme(chart: Path, text: str) -> str:
    """A chart README with its `chart` block and (when the chart has values) its `values` table regenerated."""
    readme = chart / "README.md"
    text = replace_block(text, "chart", chart_block(chart), readme)
    values = chart / "values.yaml"
    if values.exists():
        schema_file = chart / "values.schema.json"
        schema = json.loads(schema_file.read_text()) if schema_file.exists() else None
        text = replace_block(text, "values", table(values, "", schema), readme)
    return text


def outputs() -> dict[Path, str]:
    """Every generated file with its content as it should be: docs/chart.md and each chart's README.md."""
    out = {DOC: render(DOC.read_text())}
    for chart in chart_dirs():
        readme = chart / "README.md"
        assert readme.exists(), f"{readme.relative_to(ROOT)} is missing: every chart ships a README"
        out[readme] = render_readme(chart, readme.read_text())
    return out


def relative_links(markdown: str) -> list[str]:
    """Link targets without a scheme (inline, reference-style, href/src), outside code: the ones a package can break."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    links = re.findall(r"\]\(\s*<?([^)\s>]+)", text)
    links += re.findall(r"^\s*\[[^\]]+\]:\s*<?([^\s>]+)", text, re.M)
    links += re.findall(r"""(?:href|src)\s*=\s*["']([^"']+)""", text)
    return [link for link in links if not re.match(r"[A-Za-z][\w+.-]*:", link) and not link.startswith("#")]


def main() -> int:
    for path, text in outputs().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
