"""The examples docs/providers.md is built from run here, on the embedded broker and on a real RabbitMQ."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane_workers import JobQueue, JobStatus
from tests.conftest import BrokerEndpoint
from tests.support.processes import CpwProcess

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _run_demo(url: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "offload_from_my_api.py"), url],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_offload_from_my_api_on_the_embedded_broker() -> None:
    out = _run_demo("memory://docs-example")
    assert "202 {'jobId'" in out and "Succeeded after 2 attempts" in out, out
    assert "listed True" in out, out  # GET /jobs: JobQueue.list_jobs


@pytest.mark.rabbitmq
def test_offload_from_my_api_on_rabbitmq(vhost_url: str) -> None:
    out = _run_demo(vhost_url)
    assert "Succeeded after 2 attempts" in out, out


@pytest.mark.rabbitmq
async def test_my_provider_in_cpw_worker_on_rabbitmq(rabbitmq: BrokerEndpoint, vhost_url: str, tmp_path: Path) -> None:
    """As docs/providers.md runs it: PYTHONPATH=examples CPW_PROVIDERS=my_provider:registry cpw worker."""
    path = os.pathsep.join(str(p) for p in (EXAMPLES, ROOT, ROOT / "worker", ROOT / "api-adapter"))
    worker = CpwProcess(
        "worker",
        {
            "CPW_RABBITMQ_URL": vhost_url,
            "CPW_PROVIDERS": "my_provider:registry",
            "PYTHONPATH": path,
            "CPW_RETRY_BASE_DELAY": "0.05",
            "CPW_RETRY_JITTER": "0",
        },
        tmp_path / "worker.log",
    ).start()
    try:
        worker.wait_ready(60)
        request = {
            "subscription_id": "s1",
            "resource_group": "rg1",
            "resource_name": "acct1",
            "body": {"sku": {"name": "Premium_LRS"}, "properties": {"simulateBusyBackend": True}},
        }
        async with JobQueue(vhost_url) as queue:
            ns, rt = "Example.Storage", "storageAccounts"
            created = await queue.get_job_result(await queue.submit_job(ns, rt, "create", request), 60)
            assert created is not None and created.status is JobStatus.SUCCEEDED, created
            assert created.attempts == 2 and created.result["properties"]["attempt"] == 2
            assert created.result["properties"]["createdByJob"] == created.job_id

            got = await queue.get_job_result(await queue.submit_job(ns, rt, "get", request), 60)  # sync method
            assert got is not None and got.status is JobStatus.SUCCEEDED and got.result["sku"]["name"] == "Premium_LRS"

            bad = {**request, "resource_name": "acct2", "body": {"sku": {"name": "Ultra"}}}
            failed = await queue.get_job_result(await queue.submit_job(ns, rt, "create", bad), 60)
            assert failed is not None and failed.status is JobStatus.FAILED
            assert failed.error is not None and failed.error.code == "InvalidParameter" and failed.attempts == 1

            action = {**request, "action": "regenerateKey", "body": {"keyName": "key2"}}
            acted = await queue.get_job_result(await queue.submit_job(ns, rt, "action", action), 60)
            assert acted is not None and acted.status is JobStatus.SUCCEEDED and acted.result["keyName"] == "key2"
    finally:
        worker.stop()
    assert worker.process is not None and worker.process.returncode == 0, worker.tail()
