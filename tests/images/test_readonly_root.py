"""`cpw worker` and `cpw api` from the image's venv, under a read-only root with only /tmp writable.

This is how the chart runs the containers (readOnlyRootFilesystem, an emptyDir on /tmp, uid 10001,
credentials as files) minus Docker: bubblewrap gives the same filesystem view. A job goes in over
HTTP and must reach Succeeded through a real RabbitMQ; then both processes get SIGTERM and must exit
0. Any write attempted outside /tmp - even one the program would survive - fails the test.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BrokerEndpoint
from tests.images.runtime import (
    AUDIT_HOOK,
    Sandbox,
    dir_size,
    entrypoint,
    image_env,
    user_namespaces_work,
)
from tests.support.rabbitmq import free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(240)]

# The README states this; the test keeps the image honest about it.
VENV_BUDGET_BYTES = 80 * 1024 * 1024
API_VERSION = "2024-01-01"


@pytest.fixture(scope="module")
def runtime_venv(image_venv: Path) -> Path:
    """The session's image venv (tests/conftest.py), shared with tests/pods."""
    return image_venv


def test_runtime_venv_is_small(runtime_venv: Path, record_property) -> None:  # noqa: ANN001
    size = dir_size(runtime_venv)
    record_property("runtime_venv_bytes", size)
    print(f"\nruntime venv (the image's /opt/venv): {size / 1024 / 1024:.1f} MiB")
    assert size < VENV_BUDGET_BYTES, f"runtime venv is {size / 1024 / 1024:.1f} MiB"
    assert not (runtime_venv / "bin" / "pip").exists(), "the runtime venv carries no pip"
    assert (runtime_venv / "bin" / "cpw").exists()


@pytest.fixture
def sandboxes(tmp_path: Path) -> Iterator[list[Sandbox]]:
    started: list[Sandbox] = []
    yield started
    for sandbox in started:
        sandbox.close()


def _wait_ready(sandbox: Sandbox, url: str, timeout: float = 60.0) -> None:
    """Poll the readiness route (the processes have no other way to tell)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert sandbox.process is not None
        if sandbox.process.poll() is not None:
            pytest.fail(f"{sandbox.argv} exited {sandbox.process.returncode}:\n{sandbox.output()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{sandbox.argv} not ready in {timeout}s:\n{sandbox.output()[-3000:]}")


def test_cpw_runs_a_job_with_a_read_only_root(
    runtime_venv: Path, rabbitmq: BrokerEndpoint, vhost_url: str, tmp_path: Path, sandboxes: list[Sandbox]
) -> None:
    # Credentials as files, like the chart's projected Secret volumes.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "url").write_text(vhost_url)
    token = uuid.uuid4().hex
    (secrets / "tokens.yaml").write_text(json.dumps({token: "tenant-a"}))
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(AUDIT_HOOK)
    userns = user_namespaces_work()

    common = {
        "CPW_RABBITMQ_URL_FILE": str(secrets / "url"),
        "CPW_HEALTH_HOST": "127.0.0.1",
        "CPW_LOG_FORMAT": "json",
        "PYTHONPATH": str(probe),
    }
    worker_ops, api_port, api_ops = free_port(), free_port(), free_port()
    worker = Sandbox(
        entrypoint("worker"),
        {
            **image_env("worker", runtime_venv),
            **common,
            "CPW_HEALTH_PORT": str(worker_ops),
            "CPW_PROVIDERS": "controlplane_workers.examples.demo:registry",
            "CPW_DEMO_DELAY": "0.05",
        },
        [runtime_venv, secrets, probe],
        tmp_path / "worker.log",
        userns,
    )
    api = Sandbox(
        entrypoint("api"),
        {
            **image_env("api", runtime_venv),
            **common,
            "CPW_HEALTH_PORT": str(api_ops),
            "CPW_API_HOST": "127.0.0.1",
            "CPW_API_PORT": str(api_port),
            "CPW_API_TOKENS_FILE": str(secrets / "tokens.yaml"),
        },
        [runtime_venv, secrets, probe],
        tmp_path / "api.log",
        userns,
    )
    sandboxes += [worker.start(), api.start()]
    _wait_ready(worker, f"http://127.0.0.1:{worker_ops}/health/ready")
    _wait_ready(api, f"http://127.0.0.1:{api_ops}/health/ready")

    base = f"http://127.0.0.1:{api_port}"
    resource = "/subscriptions/sub1/resourceGroups/rg1/providers/Demo.Compute/virtualMachines/vm1"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
        created = http.put(
            f"{resource}?api-version={API_VERSION}",
            json={"location": "westeurope", "properties": {"vmSize": "Standard_D2s_v5"}},
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["jobId"]
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            status = http.get(f"/operations/{job_id}", params={"api-version": API_VERSION}).json()
            if status["status"] in ("Succeeded", "Failed", "Canceled"):
                break
            time.sleep(0.05)
        assert status and status["status"] == "Succeeded", status
        final = http.get(f"/operationResults/{job_id}", params={"api-version": API_VERSION})
        assert final.status_code == 200 and final.json()["properties"]["provisioningState"] == "Succeeded"
        if userns:
            assert (
                http.get(
                    f"/operations/{job_id}",
                    params={"api-version": API_VERSION},
                    headers={"Authorization": "Bearer nope"},
                ).status_code
                == 401
            )

    # SIGTERM to cpw itself, as the kubelet sends it to the container's PID 1: a clean exit.
    assert api.terminate() == 0, api.output()[-3000:]
    assert worker.terminate() == 0, worker.output()[-3000:]

    for sandbox in (worker, api):
        output = sandbox.output()
        writes = sorted(set(re.findall(r"CPW-WRITE .*", output)))
        assert not writes, f"{sandbox.argv} tried to write outside /tmp: {writes}"
        assert "Read-only file system" not in output, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
