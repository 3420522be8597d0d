"""docs/configuration.md is generated from the settings model and the charts' values; it must be current."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane_workers.settings import Settings

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_md_is_current() -> None:
    assert DOC.read_text() == _generator().render(), "docs/configuration.md is stale: run `make docs`"


def test_check_mode_of_the_generator() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_every_setting_is_documented_with_a_description() -> None:
    text = DOC.read_text()
    generator = _generator()
    for name, field in Settings.model_fields.items():
        env = str(field.validation_alias.choices[0])
        row = next((line for line in text.splitlines() if line.startswith(f"| `{env}` |")), None)
        assert row is not None, f"{env} is missing"
        assert field.description or name in generator.FALLBACK, f"{env} ({name}) has no description"


def test_every_variable_the_code_reads_is_documented() -> None:
    text = DOC.read_text()
    read = set()
    for path in [*(ROOT / "worker").rglob("*.py"), *(ROOT / "api-adapter").rglob("*.py")]:
        read |= set(
            re.findall(r"""(?:environ\.get|getenv|environ\[)\(?\s*["']((?:CPW|OTEL)_\w+)["']""", path.read_text())
        )
    assert read, "the pattern found no environment reads at all"
    missing = {name for name in read if f"`{name}`" not in text}
    assert not missing, f"read in code but not in docs/configuration.md: {sorted(missing)}"


def test_every_chart_value_is_documented() -> None:
    text = DOC.read_text()
    generator = _generator()
    for rows in generator.chart_tables().values():
        for doc in rows:
            assert f"| `{doc.key}` |" in text
    assert "`workers.maxConcurrentJobs`" in text and "`api.auth.tokens`" in text
