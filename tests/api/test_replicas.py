"""Shared status: any API process answers any job; a restarted one rebuilds before it is ready."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.api.support import RG, A, B, V, poll, start_api

pytestmark = pytest.mark.rabbitmq


async def test_two_api_processes_answer_the_same_job(vhost_url, tmp_path, worker, http):
    one, two = await asyncio.gather(start_api(vhost_url, tmp_path), start_api(vhost_url, tmp_path))
    try:
        response = await http.put(f"{one.url}{RG}/shared", params=V, headers=A, json={"script": "sleep:0.2"})
        job_id = response.json()["jobId"]
        status = await poll(
            http,
            f"{two.url}/operations/{job_id}",
            lambda r: r.status_code == 200 and r.json()["status"] == "Succeeded",
            A,
        )
        assert status.json()["properties"]["resourceName"] == "shared"
        assert (await http.get(f"{two.url}/operations/{job_id}", headers=B)).status_code == 404  # tenants hold
        final = await http.get(f"{two.url}/operationResults/{job_id}", headers=A)
        assert final.status_code == 200 and final.json()["name"] == "shared"
        # and the other way round
        other = await http.put(f"{two.url}{RG}/back", params={**V, "wait": "10"}, headers=A, json={})
        assert other.status_code == 200
        jobs = (await http.get(f"{one.url}/jobs", headers=A)).json()["value"]
        assert {j["resourceName"] for j in jobs} >= {"shared"}
    finally:
        one.stop()
        two.stop()


async def test_a_restarted_api_rebuilds_its_index_before_ready(vhost_url, tmp_path, worker, http):
    api = await start_api(vhost_url, tmp_path)
    try:
        ids = await asyncio.gather(
            *(http.put(f"{api.url}{RG}/r{i}", params=V, headers=A if i % 2 else B, json={}) for i in range(200))
        )
        ids = [(r.json()["jobId"], "tenant-a" if i % 2 else "tenant-b") for i, r in enumerate(ids)]
        await poll(http, f"{api.url}/stats", lambda r: r.json()["jobs"]["Succeeded"] == 100, A)
        await poll(http, f"{api.url}/stats", lambda r: r.json()["jobs"]["Succeeded"] == 100, B)
    finally:
        api.stop()
    restarted = await start_api(vhost_url, tmp_path, ready=False)
    try:
        # Until it is ready, API routes say 503 rather than a wrong 404.
        probe = httpx.AsyncClient(timeout=5)
        first_id, first_tenant = ids[0]
        first_headers = A if first_tenant == "tenant-a" else B  # its own tenant: another would rightly get 404
        while True:
            try:
                ready = await probe.get(f"{restarted.ops_url}/health/ready")
                early = await probe.get(f"{restarted.url}/operations/{first_id}", headers=first_headers)
            except httpx.TransportError:
                await asyncio.sleep(0.02)
                continue
            if ready.status_code == 200:
                break
            assert early.status_code in (200, 503)
            await asyncio.sleep(0.02)
        await probe.aclose()
        # Ready means rebuilt: every job answers at once, with its final state.
        for job_id, tenant in ids:
            headers = A if tenant == "tenant-a" else B
            response = await http.get(f"{restarted.url}/operations/{job_id}", headers=headers)
            assert response.status_code == 200 and response.json()["status"] == "Succeeded", response.text
        status = (await http.get(f"{restarted.ops_url}/status")).json()
        assert status["index"]["jobs"] == 200 and status["index"]["events"] >= 1  # events arrive batched
        assert status["rebuild_seconds"] is not None
        metrics = (await http.get(f"{restarted.ops_url}/metrics")).text
        assert "cpw_api_ready 1.0" in metrics and "cpw_api_index_jobs 200.0" in metrics
    finally:
        restarted.stop()
