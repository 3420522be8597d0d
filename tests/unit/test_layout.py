"""The layout the architecture promises (docs/architecture.md "Packages"): the core stands alone, the
API is one module per idea."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "api-adapter" / "controlplane_api"

pytestmark = pytest.mark.timeout(60)

# Run with -S: no .pth file is read, so the editable install's finder (which would find the adapter)
# is not there; sys.path holds the core's source folder and the installed dependencies, nothing else.
CORE_ALONE = """
import importlib, pkgutil, sys
sys.path[:0] = [{core!r}, {site!r}]
try:
    import controlplane_api
except ImportError:
    pass
else:
    raise SystemExit("the adapter is importable: the test proves nothing")
import controlplane_workers
for module in pkgutil.walk_packages(controlplane_workers.__path__, "controlplane_workers."):
    if module.name != "controlplane_workers.__main__":
        importlib.import_module(module.name)
from controlplane_workers.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_core_alone(*args: str) -> subprocess.CompletedProcess[str]:
    code = CORE_ALONE.format(core=str(ROOT / "worker"), site=sysconfig.get_paths()["purelib"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a PYTHONPATH could hold the adapter
    return subprocess.run(
        [sys.executable, "-S", "-c", code, *args], capture_output=True, text=True, timeout=50, cwd="/", env=env
    )


def test_the_core_imports_and_runs_cpw_worker_help_without_the_adapter():
    result = run_core_alone("worker", "--help")
    assert result.returncode == 0, result.stderr
    assert "--providers" in result.stdout and "--url" in result.stdout


def test_without_the_adapter_cpw_offers_the_core_commands_only():
    result = run_core_alone("--help")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert commands == ["worker", "config", "dlq", "queues"]


def test_with_the_adapter_installed_cpw_offers_its_commands_too():
    from controlplane_workers.cli import parser

    choices = next(a for a in parser()._actions if a.dest == "command").choices
    assert choices is not None and {"worker", "api", "dev", "jobs", "config", "dlq"} <= set(choices)


def test_no_api_module_is_over_250_lines_except_the_openapi_document():
    sizes = {p.relative_to(API).as_posix(): len(p.read_text().splitlines()) for p in API.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 250 and name != "openapi.py"} == {}
