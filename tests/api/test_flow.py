"""The ARM asynchronous-operation flow over real HTTP (uvicorn) and a real RabbitMQ."""

from __future__ import annotations

import pytest

from tests.api.support import RG, A, V, poll, start_api

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def api(vhost_url, tmp_path, worker):
    proc = await start_api(vhost_url, tmp_path)
    yield proc
    proc.stop()


async def test_put_201_then_operation_polls_to_succeeded(api, http):
    response = await http.put(
        f"{api.url}{RG}/vm1",
        params=V,
        headers=A,
        json={"location": "westeurope", "properties": {"size": "S"}, "script": "sleep:0.2"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["properties"] == {"size": "S", "provisioningState": "Accepted"}
    assert body["id"] == f"{RG}/vm1" and body["type"] == "Test.Scripted/things"
    job_id = body["jobId"]
    headers = response.headers
    assert headers["Azure-AsyncOperation"] == f"{api.url}/operations/{job_id}?api-version=2024-01-01"
    assert headers["Location"] == f"{api.url}/operationResults/{job_id}?api-version=2024-01-01"
    assert headers["Retry-After"] == "2"

    seen = set()

    def done(r):
        assert r.status_code == 200
        seen.add(r.json()["status"])
        return r.json()["status"] == "Succeeded"

    status = (await poll(http, headers["Azure-AsyncOperation"], done, A)).json()
    assert seen <= {"Accepted", "Running", "Succeeded"}
    assert status["name"] == job_id and status["percentComplete"] == 100 and status["error"] is None
    assert status["startTime"] and status["endTime"] and status["properties"]["operation"] == "create"
    final = await http.get(headers["Location"], headers=A)
    assert final.status_code == 200 and final.json()["name"] == "vm1"


async def test_delete_and_action_answer_202_and_end_through_location(api, http):
    response = await http.delete(f"{api.url}{RG}/vm2", params={**V, "script": "x"}, headers=A)
    assert response.status_code == 202, response.text
    assert response.json()["operation"] == "delete" and response.json()["status"] == "Accepted"
    final = await poll(http, response.headers["Location"], lambda r: r.status_code != 202, A)
    assert final.status_code == 204 and final.content == b""

    response = await http.post(f"{api.url}{RG}/vm2/restart", params=V, headers=A, json={"script": "sleep:0.1"})
    assert response.status_code == 202, response.text
    running = await http.get(response.headers["Location"], headers=A)
    assert running.status_code in (200, 202)
    if running.status_code == 202:
        assert running.headers["Retry-After"] == "2" and running.headers["Location"]
    final = await poll(http, response.headers["Location"], lambda r: r.status_code != 202, A)
    assert final.status_code == 200 and final.json()["name"] == "vm2"


async def test_get_and_list_are_offloaded_and_wait_answers_synchronously(api, http):
    # Asked for explicitly, a GET keeps the asynchronous form (a GET answers synchronously by default)
    response = await http.get(f"{api.url}{RG}/vm3", params=V, headers={**A, "Prefer": "respond-async"})
    assert response.status_code == 202 and response.json()["operation"] == "get"
    assert response.headers["Retry-After"] == "2"
    assert (await http.get(response.headers["Azure-AsyncOperation"], headers=A)).status_code == 200
    final = await poll(http, response.headers["Location"], lambda r: r.status_code != 202, A)
    assert final.status_code == 200 and final.json()["name"] == "vm3"

    response = await http.put(f"{api.url}{RG}/vm3", params={**V, "wait": "10"}, headers=A, json={"location": "x"})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "vm3" and "Location" not in response.headers

    response = await http.get(f"{api.url}{RG}/vm3", params=V, headers={**A, "Prefer": "wait=10"})
    assert response.status_code == 200 and response.json()["name"] == "vm3"

    response = await http.get(f"{api.url}{RG}", params={**V, "wait": "10"}, headers=A)
    assert response.status_code == 200 and "value" in response.json()

    response = await http.delete(f"{api.url}{RG}/vm3", params={**V, "wait": "10"}, headers=A)
    assert response.status_code == 204

    # too slow for the wait: the asynchronous answer, then the operation ends anyway
    response = await http.put(f"{api.url}{RG}/slow", params={**V, "wait": "0.1"}, headers=A, json={"script": "sleep:1"})
    assert response.status_code == 201 and response.json()["properties"]["provisioningState"] == "Accepted"
    final = await poll(http, response.headers["Location"], lambda r: r.status_code != 202, A)
    assert final.status_code == 200


async def test_failed_operation_ends_with_the_arm_error(api, http):
    response = await http.put(f"{api.url}{RG}/bad", params=V, headers=A, json={"script": "permanent"})
    assert response.status_code == 201
    status = (
        await poll(http, response.headers["Azure-AsyncOperation"], lambda r: r.json()["status"] == "Failed", A)
    ).json()
    assert status["error"]["code"] == "InvalidRequest" and status["error"]["message"]
    final = await http.get(response.headers["Location"], headers=A)
    assert final.status_code == 400
    assert final.json()["error"]["code"] == "InvalidRequest"


async def test_priority_header_and_jobs_routes(api, http):
    response = await http.put(f"{api.url}{RG}/p", params=V, headers={**A, "x-ms-priority": "9"}, json={})
    job_id = response.json()["jobId"]
    job = (await http.get(f"{api.url}/jobs/{job_id}", headers=A)).json()
    assert job["priority"] == 9 and job["operation"] == "create" and job["tenant"] == "tenant-a"
    response = await http.post(
        f"{api.url}/jobs",
        headers=A,
        params={"wait": "10"},
        json={
            "namespace": "Test.Scripted",
            "type": "things",
            "operation": "action",
            "request": {"resource_name": "j1", "action": "go", "body": {"script": "ok"}},
        },
    )
    assert response.status_code == 200 and response.json()["status"] == "Succeeded"
    assert response.json()["priority"] == 5  # the default for an action
    await poll(http, f"{api.url}/jobs/{job_id}", lambda r: r.json()["status"] == "Succeeded", A)
    page = (await http.get(f"{api.url}/jobs", params={"status": "Succeeded", "top": "1"}, headers=A)).json()
    assert len(page["value"]) == 1 and page["nextLink"]
    second = (await http.get(page["nextLink"], headers=A)).json()
    assert {page["value"][0]["id"], second["value"][0]["id"]} == {job_id, response.json()["id"]}
    assert second["nextLink"] is None
    workers = (await poll(http, f"{api.url}/workers", lambda r: r.json()["total_workers"] >= 1, A)).json()
    assert workers["ready_workers"] == 1
    stats = (await http.get(f"{api.url}/stats", headers=A)).json()
    assert stats["jobs"]["Succeeded"] == 2 and stats["consumers"] == 1
