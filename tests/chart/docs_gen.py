"""Regenerates the values tables of docs/chart.md from the charts' `# --` comments (helm-docs style).

`python tests/chart/docs_gen.py` rewrites the blocks between `<!-- values:NAME:start -->` and
`<!-- values:NAME:end -->`; tests/chart/test_docs.py fails when they are stale.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "controlplane-workers"
DOC = ROOT / "docs" / "chart.md"
TABLES = {
    "umbrella": (CHART / "values.yaml", ""),
    "workers": (CHART / "charts" / "worker" / "values.yaml", "workers."),
    "api": (CHART / "charts" / "api-adapter" / "values.yaml", "api."),
}
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?P<rest>.*)$")


def documented_values(path: Path) -> list[tuple[str, str, str]]:
    """(dotted key, description, @default override) for every key carrying a `# --` comment."""
    out: list[tuple[str, str, str]] = []
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
        start = next((n for n, c in enumerate(comment) if c.startswith("--")), None)
        if start is not None:
            parts = [comment[start][2:].strip()] + comment[start + 1 :]
            default = ""
            desc = []
            for p in parts:
                if p.startswith("@default --"):
                    default = p[len("@default --") :].strip()
                else:
                    desc.append(p)
            out.append((".".join(k for _, k in stack), " ".join(desc).strip(), default))
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


def table(path: Path, prefix: str) -> str:
    values = yaml.safe_load(path.read_text())
    rows = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for key, desc, default in documented_values(path):
        value = _lookup(values, key)
        shown = default or f"`{json.dumps(value)}`"
        desc, shown = desc.replace("|", r"\|"), shown.replace("|", r"\|")
        rows.append(f"| `{prefix}{key}` | {_type(value)} | {shown} | {desc} |")
    return "\n".join(rows)


def render(doc: str) -> str:
    for name, (path, prefix) in TABLES.items():
        start, end = f"<!-- values:{name}:start -->", f"<!-- values:{name}:end -->"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        assert pattern.search(doc), f"{DOC} lacks the markers {start} / {end}"
        doc = pattern.sub(lambda _m: f"{start}\n{table(path, prefix)}\n{end}", doc)
    return doc


def main() -> int:
    DOC.write_text(render(DOC.read_text()))
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
