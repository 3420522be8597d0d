"""`make run-postgres`: the `make run` demo (`cpw dev`) with its operations in a private PostgreSQL, run the way
the Makefile runs it (`python -m tests.support.postgres -- cpw dev`)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.api.support import ROOT, Proc, _env
from tests.support.postgres import installed
from tests.support.rabbitmq import free_port

pytestmark = pytest.mark.timeout(120)
VM = "/subscriptions/sub1/resourceGroups/rg1/providers/Demo.Compute/virtualMachines/vm1"
V = {"api-version": "2024-01-01"}


def test_the_demo_runs_with_its_operations_in_a_private_postgresql(tmp_path: Path) -> None:
    if not installed():
        pytest.skip("PostgreSQL 15 is not installed: run `make system-deps`")
    port = free_port()
    env = _env("memory://", {"CPW_HEALTH_PORT": free_port(), "CPW_DEMO_DELAY": 0.2})
    env.pop("CPW_API_HOST")
    log = tmp_path / "run-postgres.log"
    command = [sys.executable, "-m", "tests.support.postgres", "--"]
    command += [sys.executable, "-m", "controlplane_workers.cli", "dev", "--port", str(port)]
    proc = Proc(
        subprocess.Popen(command, env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT), log, port
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.proc.poll() is None and time.monotonic() < deadline, proc.output()[-3000:]
            try:
                if httpx.get(f"{proc.url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        with httpx.Client(base_url=proc.url, timeout=10) as http:
            made = http.put(VM, params=V, json={"location": "westeurope", "properties": {"vmSize": "S"}})
            assert made.status_code == 201, made.text
            status_url = made.headers["Azure-AsyncOperation"]
            deadline = time.monotonic() + 30
            while (status := http.get(status_url).json()["status"]) not in ("Succeeded", "Failed"):
                assert time.monotonic() < deadline, status
                time.sleep(0.05)  # a client polling its operation
            assert status == "Succeeded"
            assert http.get(f"{proc.url}/status").json()["index"]["store"] == "postgresql"
    finally:
        code = proc.stop()
    assert code == 0, proc.output()[-3000:]
    data = re.search(r"data in (\S+),", proc.output())
    assert data and not Path(data.group(1)).exists(), "the private PostgreSQL is removed on exit"
