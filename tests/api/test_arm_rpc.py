"""The ARM RPC's common behaviour over real HTTP: synchronous GETs within a budget, PATCH, the request id
headers on every answer."""

from __future__ import annotations

import re
import time

import pytest

from tests.api.support import RG, A, V, start_api, start_worker

pytestmark = pytest.mark.rabbitmq

VMS = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Demo.Compute/virtualMachines"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture
async def api(vhost_url, tmp_path):
    worker = await start_worker(vhost_url, tmp_path, CPW_PROVIDERS="tests.support.providers:arm_registry")
    proc = await start_api(vhost_url, tmp_path)
    yield proc
    proc.stop()
    worker.stop()


async def test_get_answers_the_resource_or_404_and_patch_is_polled_like_put(api, http):
    missing = await http.get(f"{api.url}{VMS}/vm1", params=V, headers=A)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "ResourceNotFound"
    created = await http.put(f"{api.url}{VMS}/vm1", params={**V, "wait": "10"}, headers=A, json={"location": "x"})
    assert created.status_code == 200 and created.json()["properties"]["provisioningState"] == "Succeeded"

    response = await http.get(f"{api.url}{VMS}/vm1", params=V, headers=A)
    assert response.status_code == 200 and response.json()["name"] == "vm1"
    assert "Location" not in response.headers and "jobId" not in response.json()

    patched = await http.patch(f"{api.url}{VMS}/vm1", params=V, headers=A, json={"tags": {"env": "dev"}})
    assert patched.status_code == 202 and patched.json()["operation"] == "update"
    assert all(patched.headers.get(h) for h in ("Location", "Azure-AsyncOperation", "Retry-After"))
    done = await http.get(patched.headers["Location"], params={"wait": "10"}, headers=A)
    assert done.status_code == 200 and done.json()["tags"] == {"env": "dev"}
    assert done.json()["properties"]["provisioningState"] == "Succeeded"
    patched = await http.patch(
        f"{api.url}{VMS}/vm1", params={**V, "wait": "10"}, headers=A, json={"tags": {"env": None, "team": "a"}}
    )
    assert patched.status_code == 200 and patched.json()["tags"] == {"team": "a"}  # a JSON merge patch
    assert (await http.patch(f"{api.url}{VMS}/vm1", params=V, headers=A)).status_code == 400  # a body is required


async def test_every_answer_carries_the_request_ids(api, http):
    sent = {"x-ms-client-request-id": "client-1", "x-ms-correlation-request-id": "corr-1"}
    answers = [
        await http.get(f"{api.url}{RG}/x", params=V, headers={**A, **sent}),  # 200
        await http.get(f"{api.url}{RG}/x", headers={**A, **sent}),  # 400 MissingApiVersionParameter
        await http.get(f"{api.url}/jobs", headers=sent),  # 401
        await http.get(f"{api.url}/nowhere", headers={**A, **sent}),  # 404, no route
    ]
    assert [r.status_code for r in answers] == [200, 400, 401, 404]
    ids = set()
    for response in answers:
        assert GUID.match(response.headers["x-ms-request-id"]), response.headers
        assert response.headers["x-ms-client-request-id"] == "client-1"
        assert response.headers["x-ms-correlation-request-id"] == "corr-1"
        ids.add(response.headers["x-ms-request-id"])
    assert len(ids) == 4  # one id per answer
    alone = await http.get(f"{api.url}/openapi.json")
    assert "x-ms-client-request-id" not in alone.headers
    assert alone.headers["x-ms-correlation-request-id"] == alone.headers["x-ms-request-id"]


async def test_a_get_past_its_budget_answers_504_with_retry_after_and_async_is_explicit(vhost_url, tmp_path, http):
    api = await start_api(vhost_url, tmp_path, CPW_API_SYNC_TIMEOUT=0.3)  # no worker: no job ever ends
    try:
        for url in (f"{api.url}{RG}/slow", f"{api.url}{RG}"):
            started = time.monotonic()
            response = await http.get(url, params=V, headers=A)
            assert response.status_code == 504, response.text
            assert 0.3 <= time.monotonic() - started < 5
            assert response.json()["error"]["code"] == "GatewayTimeout"
            assert response.headers["Retry-After"] == "2" and "Location" not in response.headers
        response = await http.get(f"{api.url}{RG}/slow", params=V, headers={**A, "Prefer": "respond-async"})
        assert response.status_code == 202 and response.json()["status"] == "Accepted"
        assert response.headers["Retry-After"] == "2" and response.headers["Location"]
        metrics = (await http.get(f"{api.ops_url}/metrics")).text
        assert 'cpw_api_rejections_total{reason="sync_timeout"} 2.0' in metrics
    finally:
        api.stop()
