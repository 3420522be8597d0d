"""Tenants are held apart on the resource routes too: subscriptions per token, the provider keyed by
tenant, paging by skipToken. Real `cpw api` and `cpw worker` processes, a real RabbitMQ."""

from __future__ import annotations

import pytest

from tests.api.support import RG, A, B, V, start_api, start_worker, write_tokens

from .test_errors import arm

pytestmark = pytest.mark.rabbitmq


async def test_skiptoken_of_another_tenants_job_does_not_change_the_page(vhost_url, tmp_path, http):
    api = await start_api(vhost_url, tmp_path)
    try:
        theirs = [
            (await http.put(f"{api.url}{RG}/a{i}", params=V, headers=A, json={})).json()["jobId"] for i in range(3)
        ]
        mine = (await http.put(f"{api.url}{RG}/b", params=V, headers=B, json={})).json()["jobId"]
        page = (await http.get(f"{api.url}/jobs", params={"top": "1"}, headers=A)).json()
        assert [j["id"] for j in page["value"]] == [theirs[-1]] and f"skipToken={theirs[-1]}" in page["nextLink"]
        for token in (*theirs, "not-a-job"):
            response = await http.get(f"{api.url}/jobs", params={"skipToken": token}, headers=B)
            assert [j["id"] for j in response.json()["value"]] == [mine], token
        response = await http.get(f"{api.url}/jobs", params={"skipToken": theirs[1]}, headers=A)
        assert [j["id"] for j in response.json()["value"]] == [theirs[0]]  # the owner's own token still pages
    finally:
        api.stop()


DEMO = "/subscriptions/{sub}/resourceGroups/rg-1/providers/Demo.Compute/virtualMachines"
WAIT = {**V, "wait": "20"}


@pytest.fixture
async def demo_worker(vhost_url, tmp_path):
    proc = await start_worker(
        vhost_url, tmp_path, CPW_PROVIDERS="controlplane_workers.examples.demo:registry", CPW_DEMO_DELAY=0
    )
    yield proc
    proc.stop()


async def test_the_provider_keeps_each_tenants_resources_apart(vhost_url, tmp_path, demo_worker, http):
    """Unscoped tokens (`token: tenant`): both tenants may name sub-1, but the demo provider keys by
    tenant, so B never sees, overwrites or deletes A's machine."""
    api = await start_api(vhost_url, tmp_path)
    try:
        coll = f"{api.url}{DEMO.format(sub='sub-1')}"
        secret = {"location": "westeurope", "properties": {"adminPassword": "a-secret"}}
        made = await http.put(f"{coll}/vm", params=WAIT, headers=A, json=secret)
        assert made.status_code == 200 and made.json()["properties"]["adminPassword"] == "a-secret", made.text
        got = await http.get(f"{coll}/vm", params=WAIT, headers=B)
        assert got.status_code == 404 and "a-secret" not in got.text, got.text
        listed = await http.get(coll, params=WAIT, headers=B)
        assert listed.status_code == 200 and listed.json()["value"] == [], listed.text
        over = await http.put(f"{coll}/vm", params=WAIT, headers=B, json={"properties": {"adminPassword": "b"}})
        assert over.status_code == 200 and over.json()["properties"]["adminPassword"] == "b"
        assert (await http.delete(f"{coll}/vm", params=WAIT, headers=B)).status_code == 204
        mine = await http.get(f"{coll}/vm", params=WAIT, headers=A)
        assert mine.status_code == 200 and mine.json()["properties"]["adminPassword"] == "a-secret"
        assert [vm["name"] for vm in (await http.get(coll, params=WAIT, headers=A)).json()["value"]] == ["vm"]
    finally:
        api.stop()


SCOPED = {
    "token-a": {"tenant": "tenant-a", "subscriptions": ["SUB-1", "sub-3"]},
    "token-b": {"tenant": "tenant-b", "subscriptions": ["sub-2"]},
}


async def test_a_subscription_outside_the_token_is_404_and_makes_no_job(vhost_url, tmp_path, demo_worker, http):
    api = await start_api(vhost_url, tmp_path, CPW_API_TOKENS_FILE=write_tokens(tmp_path, SCOPED))
    try:
        sub1 = f"{api.url}{DEMO.format(sub='sub-1')}"
        made = await http.put(f"{sub1}/vm", params=WAIT, headers=A, json={"properties": {"adminPassword": "x"}})
        assert made.status_code == 200, made.text  # SUB-1 in the token, sub-1 in the path: GUIDs ignore case
        for method, url, body in (
            ("PUT", f"{sub1}/vm", {}),
            ("GET", f"{sub1}/vm", None),
            ("DELETE", f"{sub1}/vm", None),
            ("POST", f"{sub1}/vm/stop", {}),
            ("GET", sub1, None),
        ):
            response = await http.request(method, url, params=WAIT, headers=B, json=body)
            assert response.status_code == 404, (method, url, response.text)
            error = arm(response, "SubscriptionNotFound")
            assert error["message"] == "The subscription 'sub-1' could not be found."
        job = {"namespace": "Demo.Compute", "type": "virtualMachines", "operation": "get"}
        job["request"] = {"subscription_id": "Sub-1", "resource_group": "rg-1", "resource_name": "vm"}
        arm(await http.post(f"{api.url}/jobs", headers=B, json=job), "SubscriptionNotFound")
        assert (await http.get(f"{api.url}/jobs", headers=B)).json()["value"] == []  # no job was made
        assert (await http.post(f"{api.url}/jobs", params={"wait": "20"}, headers=A, json=job)).status_code == 200
        mine = await http.get(f"{sub1}/vm", params=WAIT, headers=A)
        assert mine.status_code == 200 and mine.json()["properties"]["adminPassword"] == "x"  # B changed nothing
        response = await http.put(f"{api.url}{DEMO.format(sub='sub-2')}/vm", params=WAIT, headers=B, json={})
        assert response.status_code == 200, response.text  # B's own subscription works
    finally:
        api.stop()
