"""Idempotency-Key across API replicas: a client whose answer was lost retries on whichever replica
the Service picks (or on the restarted process) and must get the job the first request made."""

from __future__ import annotations

import asyncio

import pytest

from tests.api.support import RG, A, B, V, poll, start_api

pytestmark = pytest.mark.rabbitmq


async def test_a_retry_on_another_replica_or_after_a_restart_gets_the_same_job(vhost_url, tmp_path, http):
    one, two = await asyncio.gather(start_api(vhost_url, tmp_path), start_api(vhost_url, tmp_path))
    restarted = None
    try:
        key = {"Idempotency-Key": "create-vm-7"}
        body = {"script": "ok", "size": "S"}
        first = await http.put(f"{one.url}{RG}/vm7", params=V, headers={**A, **key}, json=body)
        assert first.status_code == 201
        job_id = first.json()["jobId"]
        # The other replica knows the key once it has read the job's Accepted record.
        await poll(http, f"{two.url}/jobs/{job_id}", lambda r: r.status_code == 200, A)

        again = await http.put(f"{two.url}{RG}/vm7", params=V, headers={**A, **key}, json=body)
        assert again.status_code in (200, 201, 202), again.text
        assert again.json().get("jobId", job_id) == job_id and again.headers["Idempotent-Replayed"] == "true"
        assert f"/operations/{job_id}?" in again.headers["Azure-AsyncOperation"]

        other_body = await http.put(f"{two.url}{RG}/vm7", params=V, headers={**A, **key}, json={"size": "L"})
        assert other_body.status_code == 422 and other_body.json()["error"]["code"] == "IdempotencyKeyReused"

        # Keys belong to a tenant: the same key from another tenant is another job.
        theirs = await http.put(f"{two.url}{RG}/vm7", params=V, headers={**B, **key}, json=body)
        assert theirs.status_code == 201 and theirs.json()["jobId"] != job_id

        one.stop()
        restarted = await start_api(vhost_url, tmp_path)  # ready = its index rebuilt from the stream
        after = await http.put(f"{restarted.url}{RG}/vm7", params=V, headers={**A, **key}, json=body)
        assert after.json().get("jobId", job_id) == job_id and after.headers["Idempotent-Replayed"] == "true"
        jobs = (await http.get(f"{restarted.url}/jobs", headers=A)).json()["value"]
        assert [j["id"] for j in jobs] == [job_id]  # one job for tenant A, however often it was retried
    finally:
        for api in (one, two, restarted):
            if api is not None:
                api.stop()
