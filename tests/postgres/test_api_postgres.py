"""The API with CPW_API_STORE=postgresql over real HTTP, RabbitMQ, PostgreSQL, a worker and `cpw indexer`."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.api.support import RG, A, B, V, poll, start_api, start_worker
from tests.postgres.test_projector import start_indexer

pytestmark = pytest.mark.rabbitmq
PASSWORD = "s3cret-pw"  # the test cluster trusts loopback: any password is accepted, and must never be logged


async def test_the_arm_flow_with_operations_in_postgresql(vhost_url, pg_url, tmp_path):
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(pg_url.replace("postgres@", f"postgres:{PASSWORD}@"))
    worker = await start_worker(vhost_url, tmp_path)
    started = time.monotonic()
    api = await start_api(vhost_url, tmp_path, CPW_API_STORE="postgresql", CPW_POSTGRES_URL_FILE=dsn_file)
    ready_s = time.monotonic() - started
    indexer = None
    try:
        async with httpx.AsyncClient(timeout=30.0) as http:
            body = {"location": "westeurope", "properties": {"size": "S"}, "script": "sleep:0.2"}
            made = await http.put(f"{api.url}{RG}/vm1", params=V, headers=A, json=body)
            assert made.status_code == 201, made.text
            job_id, status_url = made.json()["jobId"], made.headers["Azure-AsyncOperation"]
            # No projector is running yet: the API's own Accepted row answers its Location at once.
            first = await http.get(status_url, headers=A)
            assert first.status_code == 200 and first.json()["status"] == "Accepted", first.text

            indexer = start_indexer(vhost_url, pg_url, tmp_path, "api-test", batch=256)
            done = await poll(http, status_url, lambda r: r.json()["status"] == "Succeeded", A)
            assert done.json()["name"] == job_id and done.json()["endTime"]
            final = await http.get(made.headers["Location"], headers=A)
            assert final.status_code == 200 and final.json()["name"] == "vm1"

            # ?wait= ends on the projector's NOTIFY, not on a poll of the client's
            asked = time.monotonic()
            waited = await http.put(f"{api.url}{RG}/vm2", params={**V, "wait": "10"}, headers=A, json=body)
            assert waited.status_code == 200 and waited.json()["name"] == "vm2", waited.text
            assert time.monotonic() - asked < 0.9, "ended on a NOTIFY, before the 1 s re-read"

            unknown = await http.get(f"{api.url}/operations/{job_id[:-4]}ffff", params=V, headers=A)
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "OperationNotFound"
            theirs = await http.get(status_url, headers=B)
            assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "OperationNotFound"
            page = (await http.get(f"{api.url}/jobs", params={**V, "top": 1}, headers=A)).json()
            assert [j["resourceName"] for j in page["value"]] == ["vm2"]  # newest first
            rest = (await http.get(page["nextLink"] + "&api-version=2024-01-01", headers=A)).json()
            assert [j["id"] for j in rest["value"]] == [job_id] and rest["nextLink"] is None
            assert (await http.get(f"{api.url}/jobs", params=V, headers=B)).json()["value"] == []
            mine = (await http.get(f"{api.url}/jobs", params={**V, "status": "Succeeded"}, headers=A)).json()
            assert len(mine["value"]) == 2
            state = (await http.get(f"{api.ops_url}/status")).json()["index"]
            assert state["store"] == "postgresql" and PASSWORD not in state["url"] and "***" in state["url"]
            # what CPWProjectorNotRunning reads to know a projector must run for this release
            scraped = (await http.get(f"{api.ops_url}/metrics")).text
            assert 'cpw_api_operation_store{store="postgresql"} 1.0' in scraped
        print(f"\napi ready on PostgreSQL in {ready_s:.2f}s (process start included)")
    finally:
        api.stop()
        worker.stop()
        if indexer is not None:
            indexer.stop()
    for proc in (api, indexer):
        assert proc is not None and PASSWORD not in proc.output()


async def test_a_delayed_job_on_postgresql_shows_its_start_and_cancels_at_once(vhost_url, pg_url, tmp_path):
    api = await start_api(vhost_url, tmp_path, CPW_API_STORE="postgresql", CPW_POSTGRES_URL=pg_url)
    indexer = start_indexer(vhost_url, pg_url, tmp_path, "delayed", batch=16)
    try:
        async with httpx.AsyncClient(timeout=30.0) as http:
            made = await http.put(f"{api.url}{RG}/later", params=V, headers={**A, "x-cpw-delay": "600"}, json={})
            assert made.status_code == 201, made.text
            job_id = made.json()["jobId"]
            shown = (await http.get(f"{api.url}/jobs/{job_id}", headers=A)).json()
            assert shown["status"] == "Accepted" and shown["notBefore"] is not None
            # no worker runs: the API records Canceled itself, the projector writes it, ?wait ends on its NOTIFY
            canceled = await http.delete(f"{api.url}/jobs/{job_id}", params={"wait": "20"}, headers=A)
            assert canceled.status_code == 200 and canceled.json()["status"] == "Canceled", canceled.text
            assert canceled.json()["notBefore"] == shown["notBefore"]
    finally:
        api.stop()
        indexer.stop()
