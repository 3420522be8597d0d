"""Render the umbrella chart to stdout with the real Helm engine (helm-python-sdk), like `helm template`.

    python tests/chart/render.py [-f values.yaml ...] [--set a.b=c ...] [--name cpw] [--namespace cpw-system]

Used by `make chart`; no helm binary or cluster needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import helm_python

CHART = Path(__file__).resolve().parents[2] / "charts" / "controlplane-workers"


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-f", "--values", action="append", default=[], help="values file (repeatable)")
    p.add_argument("--set", action="append", default=[], help="a.b=c (repeatable)")
    p.add_argument("--name", default="cpw")
    p.add_argument("--namespace", default="cpw-system")
    args = p.parse_args(argv)
    values: dict = {}
    for f in args.values:
        _merge(values, helm_python.values_from_yaml(Path(f).read_text()))
    for s in args.set:
        _merge(values, helm_python.parse_set_string(s))
    with helm_python.Chart.load(CHART) as chart:
        try:
            out = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
        except helm_python.HelmError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    for template in sorted(out):
        if out[template].strip() and not template.endswith("NOTES.txt"):
            print(f"---\n# Source: {template}\n{out[template].strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
