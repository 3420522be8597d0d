"""Real ARM clients work unchanged: the Azure SDK's own machinery (azure-core's pipeline, LROPoller with
azure-mgmt-core's ARMPolling, ItemPaged) against a real `cpw api` and worker over a real RabbitMQ.

The docs/api.md example runs as written; the tests below add what the example does not show."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from tests.api.support import Proc, _env, spawn, start_api, start_worker, wait_ready_sync
from tests.support.rabbitmq import free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(180)]

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


@pytest.fixture
def cpw_dev(tmp_path) -> Iterator[Proc]:
    """`cpw dev` as a reader of the README starts it: the embedded broker, the demo provider, no tokens."""
    port = free_port()
    env = _env("memory://", {"CPW_HEALTH_PORT": free_port(), "CPW_API_RETRY_AFTER": 1, "CPW_DEMO_DELAY": 0.2})
    env.pop("CPW_API_HOST")
    log = tmp_path / "dev.log"
    proc = Proc(spawn(["dev", "--port", str(port)], env, log), log, port, port, env)
    wait_ready_sync(proc)
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


@pytest.fixture
def api(vhost_url, tmp_path):
    loop = asyncio.new_event_loop()
    try:
        worker = loop.run_until_complete(
            start_worker(vhost_url, tmp_path, CPW_PROVIDERS="tests.support.providers:arm_registry")
        )
        proc = loop.run_until_complete(start_api(vhost_url, tmp_path, CPW_API_RETRY_AFTER=1))
    finally:
        loop.close()
    yield proc
    proc.stop()
    worker.stop()


def sdk(api_url: str, token: str = "token-a") -> dict[str, Any]:
    """The docs' example run as written: its helpers (`long_running`, `get`, `list_all`) stay usable."""
    text = DOC.read_text().split("## Use it from the Azure SDK", 1)[1]
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None
    scope: dict[str, Any] = {"API": api_url, "TOKEN": token}
    exec(compile(block.group(1), str(DOC), "exec"), scope)  # noqa: S102 - our own docs
    return scope


def test_the_docs_example_runs_put_patch_action_get_list_delete(api):
    sdk(api.url)


def test_the_docs_example_runs_against_cpw_dev(cpw_dev):
    sdk(cpw_dev.url, token="")  # cpw dev serves without tokens


def test_paged_list_and_failed_create_through_the_sdk(api):
    s = sdk(api.url)
    vms = s["VMS"]
    for n in range(5):
        s["long_running"]("PUT", f"{vms}/vm{n}", {"location": "westeurope"})
    pages = s["list_all"](vms, top=2).by_page()
    names = [[vm["name"] for vm in page] for page in pages]
    assert names == [["vm0", "vm1"], ["vm2", "vm3"], ["vm4"]]  # three pages, followed through nextLink
    # a nextLink is absolute and keeps api-version
    page = s["send"]("GET", vms, **{"$top": "2"}).http_response.json()
    assert page["nextLink"] == f"{api.url}{vms}?api-version=2024-01-01&%24top=2&%24skiptoken=2"

    things = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Test.Scripted/things"
    with pytest.raises(HttpResponseError) as failed:
        s["long_running"]("PUT", f"{things}/bad", {"script": "permanent"})
    assert failed.value.error is not None and failed.value.error.code == "InvalidRequest"
    with pytest.raises(HttpResponseError) as refused:  # refused before any job: the initial answer's error
        s["long_running"]("PUT", f"{things}/bad", {"tags": {"env": 1}})
    assert refused.value.status_code == 400 and refused.value.error.code == "InvalidRequestContent"
    # an unknown action fails the job: the SDK surfaces the provider's ARM code
    with pytest.raises(HttpResponseError) as action:
        s["long_running"]("POST", f"{vms}/vm0/explode")
    assert action.value.error.code == "InvalidAction"
