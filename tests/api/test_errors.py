"""Every error path: 401, 404 across tenants, 400 naming the field, 413, 422, 429, 503, 409, and
Idempotency-Key replay, over real HTTP and a real RabbitMQ."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from tests.api.support import RG, A, B, V, poll, start_api, start_worker

pytestmark = pytest.mark.rabbitmq
JOB = {"namespace": "Test.Scripted", "type": "things", "operation": "create", "request": {"resource_name": "j"}}


def arm(response, code: str | None = None) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    assert "Traceback" not in response.text and 'File "' not in response.text
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture
async def api(vhost_url, tmp_path):
    proc = await start_api(vhost_url, tmp_path, CPW_API_MAX_BODY_BYTES=2048, CPW_API_TENANT_MAX_QUEUED=3)
    yield proc
    proc.stop()


async def test_401_without_or_with_a_bad_token(api, http):
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic dG9rZW4tYQ=="},
        {"Authorization": "Bearer token-a-but-longer"},
    ):
        response = await http.put(f"{api.url}{RG}/x", params=V, headers=headers, json={})
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        arm(response, "AuthenticationFailed")
    assert (await http.get(f"{api.url}/jobs")).status_code == 401
    assert (await http.get(f"{api.url}/openapi.json")).status_code == 200  # the contract is public
    metrics = (await http.get(f"{api.ops_url}/metrics")).text
    assert 'cpw_api_rejections_total{reason="unauthorized"} 5.0' in metrics
    assert (
        'cpw_api_requests_total{code="401",method="PUT",route="/subscriptions/{subscription}/resourceGroups/'
        '{resourceGroup}/providers/{namespace}/{type}/{name}"} 4.0' in metrics
    )


async def test_another_tenants_job_is_404(api, http):
    job_id = (await http.put(f"{api.url}{RG}/mine", params=V, headers=A, json={})).json()["jobId"]
    assert (await http.get(f"{api.url}/operations/{job_id}", headers=A)).status_code == 200
    for method, path in (
        ("GET", f"/operations/{job_id}"),
        ("GET", f"/operationResults/{job_id}"),
        ("GET", f"/jobs/{job_id}"),
        ("DELETE", f"/jobs/{job_id}"),
    ):
        response = await http.request(method, f"{api.url}{path}", headers=B)
        assert response.status_code == 404, (method, path)
        arm(response, "OperationNotFound")
    assert (await http.get(f"{api.url}/jobs", headers=B)).json()["value"] == []
    assert [j["id"] for j in (await http.get(f"{api.url}/jobs", headers=A)).json()["value"]] == [job_id]
    arm(await http.get(f"{api.url}/operations/nope", headers=A), "OperationNotFound")


async def test_400_names_the_field(api, http):
    url = f"{api.url}{RG}/x"
    error = arm(await http.put(url, headers=A, json={}), "MissingApiVersionParameter")
    assert error["details"][0]["target"] == "api-version"
    error = arm(await http.put(url, params={"api-version": "latest"}, headers=A, json={}), "InvalidApiVersionParameter")
    error = arm(
        await http.put(url, params=V, headers={**A, "Content-Type": "application/json"}, content=b'{"location": '),
        "InvalidRequestContent",
    )
    assert error["details"][0]["target"] == "body" and "not valid JSON" in error["message"]
    error = arm(await http.put(url, params=V, headers=A, json=[1]), "InvalidRequestContent")
    error = arm(await http.put(url, params=V, headers=A, json={"tags": {"env": 1}}), "InvalidRequestContent")
    assert error["details"][0]["target"] == "tags.env" and "tags.env" in error["message"]
    error = arm(await http.put(url, params=V, headers={**A, "x-ms-priority": "12"}, json={}))
    assert error["details"][0]["target"] == "x-ms-priority"
    error = arm(await http.put(f"{api.url}{RG}/bad%20name", params=V, headers=A, json={}))
    assert error["details"][0]["target"] == "name"
    error = arm(
        await http.post(f"{api.url}/jobs", headers=A, json={"namespace": "N.S", "type": "t", "operation": "explode"})
    )
    assert error["details"][0]["target"] == "operation"
    error = arm(await http.get(f"{api.url}/jobs", params={"status": "Sleeping"}, headers=A))
    assert error["details"][0]["target"] == "status"
    error = arm(await http.put(url, params={**V, "wait": "soon"}, headers=A, json={}))
    assert error["details"][0]["target"] == "wait"
    arm(await http.patch(f"{api.url}/jobs", headers=A, json={}), "MethodNotAllowed")
    arm(await http.get(f"{api.url}/nowhere", headers=A), "NotFound")


async def test_413_for_a_large_body_declared_or_streamed(api, http):
    big = {"properties": {"blob": "x" * 4096}}
    response = await http.put(f"{api.url}{RG}/big", params=V, headers=A, json=big)
    assert response.status_code == 413
    arm(response, "RequestEntityTooLarge")

    async def chunks():
        for _ in range(8):
            yield b" " * 512

    response = await http.put(f"{api.url}{RG}/big", params=V, headers=A, content=chunks())
    assert response.status_code == 413


async def test_idempotency_key_replays_and_refuses_another_body(api, http):
    url = f"{api.url}{RG}/idem"
    first = await http.put(url, params=V, headers={**A, "Idempotency-Key": "k-1"}, json={"location": "a"})
    again = await http.put(url, params=V, headers={**A, "Idempotency-Key": "k-1"}, json={"location": "a"})
    assert first.status_code == again.status_code == 201
    assert again.json()["jobId"] == first.json()["jobId"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    other = await http.put(url, params=V, headers={**A, "Idempotency-Key": "k-1"}, json={"location": "b"})
    assert other.status_code == 422
    assert arm(other, "IdempotencyKeyReused")["details"][0]["target"] == "Idempotency-Key"
    # concurrent requests with one key: one job
    answers = await asyncio.gather(
        *(http.delete(url, params=V, headers={**A, "Idempotency-Key": "k-2"}) for _ in range(5))
    )
    assert len({r.json()["jobId"] for r in answers}) == 1
    # keys are per tenant: tenant-b's k-1 is a new operation
    theirs = await http.put(url, params=V, headers={**B, "Idempotency-Key": "k-1"}, json={"location": "a"})
    assert theirs.status_code == 201 and theirs.json()["jobId"] != first.json()["jobId"]
    jobs = (await http.get(f"{api.url}/jobs", headers=A)).json()["value"]
    assert len(jobs) == 2


async def test_429_when_a_tenant_has_too_many_jobs_queued(api, http):
    for i in range(3):  # no worker runs: they stay queued
        assert (await http.put(f"{api.url}{RG}/q{i}", params=V, headers=A, json={})).status_code == 201
    response = await http.put(f"{api.url}{RG}/q3", params=V, headers=A, json={})
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    arm(response, "TooManyRequests")
    assert (await http.put(f"{api.url}{RG}/q3", params=V, headers=B, json={})).status_code == 201


async def test_the_queued_cap_holds_under_concurrent_submissions(vhost_url, tmp_path):
    """The slot is taken before the publish, not counted after the confirm: 100 at once, 5 accepted."""
    api = await start_api(vhost_url, tmp_path, CPW_API_TENANT_MAX_QUEUED=5)
    try:
        async with httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=100)) as http:
            answers = await asyncio.gather(
                *(http.put(f"{api.url}{RG}/c{i}", params=V, headers=A, json={}) for i in range(100))
            )
            codes = [r.status_code for r in answers]
            assert codes.count(201) == 5 and codes.count(429) == 95, sorted(codes)
            assert all(r.headers["Retry-After"] == "2" for r in answers if r.status_code == 429)
            jobs = (await http.get(f"{api.url}/jobs", headers=A)).json()["value"]
            assert len(jobs) == 5  # no job was published for a refused request
            assert (await http.put(f"{api.url}{RG}/after", params=V, headers=A, json={})).status_code == 429
    finally:
        api.stop()


async def test_cancel_is_idempotent_then_409_once_ended(vhost_url, tmp_path, http):
    api = await start_api(vhost_url, tmp_path)
    try:
        queued = (await http.put(f"{api.url}{RG}/queued", params=V, headers=A, json={})).json()["jobId"]
        for _ in range(2):  # no worker yet: the job stays queued, and cancelling again changes nothing
            response = await http.delete(f"{api.url}/jobs/{queued}", headers=A)
            assert response.status_code == 202 and response.json()["status"] == "Accepted"
        worker = await start_worker(vhost_url, tmp_path)
        try:
            final = await poll(http, f"{api.url}/operationResults/{queued}", lambda r: r.status_code != 202, A)
            assert final.status_code == 409 and arm(final, "Canceled")
            hung = (await http.put(f"{api.url}{RG}/hang", params=V, headers=A, json={"script": "hang"})).json()
            await poll(http, f"{api.url}/jobs/{hung['jobId']}", lambda r: r.json()["status"] == "Running", A)
            response = await http.delete(f"{api.url}/jobs/{hung['jobId']}", params={"wait": "10"}, headers=A)
            assert response.status_code == 200 and response.json()["status"] == "Canceled"
            assert response.json()["error"]["code"] == "Canceled"
        finally:
            worker.stop()
        for job_id in (queued, hung["jobId"]):
            ended = await http.delete(f"{api.url}/jobs/{job_id}", headers=A)
            assert ended.status_code == 409
            arm(ended, "Conflict")
    finally:
        api.stop()


async def test_404_says_expired_once_evicted(vhost_url, tmp_path, http, worker):
    """Over its bound the index evicts the job that finished first; an Accepted or Running job never goes."""
    api = await start_api(vhost_url, tmp_path, CPW_API_INDEX_MAX_JOBS=100, CPW_API_TENANT_MAX_QUEUED=1000)
    try:
        ids = []
        for i in range(101):
            ids.append((await http.put(f"{api.url}{RG}/e{i}", params=V, headers=A, json={})).json()["jobId"])
            if i == 0:  # the first job finishes before the others are submitted
                done = await http.get(f"{api.url}/operationResults/{ids[0]}", params={**V, "wait": "10"}, headers=A)
                assert done.status_code == 200
        for job_id in ids[1:]:
            done = await http.get(f"{api.url}/operationResults/{job_id}", params={**V, "wait": "10"}, headers=A)
            assert done.status_code == 200
        arm(await http.get(f"{api.url}/operations/{ids[0]}", headers=A), "OperationExpired")
        assert (await http.get(f"{api.url}/operations/{ids[1]}", headers=A)).status_code == 200
    finally:
        api.stop()


async def test_503_while_the_broker_is_down_and_reads_keep_working(vhost_url, tmp_path, rabbitmq, http):
    if rabbitmq.server is None:
        pytest.skip("needs the test's own RabbitMQ node to stop it")
    api = await start_api(vhost_url, tmp_path)
    try:
        job_id = (await http.put(f"{api.url}{RG}/before", params=V, headers=A, json={})).json()["jobId"]
        rabbitmq.server.stop_app()
        try:
            response = await poll(
                http, f"{api.url}/jobs/{job_id}", lambda r: True, A
            )  # reads are served from the index
            assert response.status_code == 200
            response = await http.put(f"{api.url}{RG}/during", params=V, headers=A, json={})
            assert response.status_code == 503 and response.headers["Retry-After"] == "2"
            arm(response, "ServiceUnavailable")
            assert (await http.get(f"{api.ops_url}/health/live")).status_code == 200
        finally:
            rabbitmq.server.start_app()
        after = await poll(  # no worker here: the explicit asynchronous GET, answered once the job is confirmed
            http,
            f"{api.url}{RG}/after?api-version=2024-01-01",
            lambda r: r.status_code == 202,
            {**A, "Prefer": "respond-async"},
            timeout=60,
        )
        assert after.json()["jobId"]
    finally:
        api.stop()


async def test_cpw_api_refuses_to_start_without_tokens(vhost_url, tmp_path):
    from tests.api.support import Proc, _env, spawn

    env = _env(vhost_url, {"CPW_API_PORT": 0, "CPW_HEALTH_PORT": 0})
    proc = Proc(spawn(["api"], env, tmp_path / "api.log"), tmp_path / "api.log")
    assert proc.proc.wait(30) == 2
    assert "CPW_API_TOKENS_FILE" in proc.output()
    with socket.socket():
        pass


async def test_an_idempotent_replay_answers_from_the_job_not_a_stored_body(vhost_url, tmp_path, http, worker):
    """The cache keeps the job id only: a replay is answered again from the job (a finished one with
    ?wait gives its outcome), and a replay whose job left the index is a 404, never a 500."""
    api = await start_api(vhost_url, tmp_path, CPW_API_INDEX_MAX_JOBS=100)
    try:
        key = {**A, "Idempotency-Key": "big-1"}
        body = {"location": "westeurope", "properties": {"blob": "x" * 100_000}}
        first = await http.put(f"{api.url}{RG}/idem-big", params=V, headers=key, json=body)
        assert first.status_code == 201
        again = await http.put(f"{api.url}{RG}/idem-big", params={**V, "wait": "10"}, headers=key, json=body)
        assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
        job = await http.post(f"{api.url}/jobs", headers={**A, "Idempotency-Key": "job-1"}, json=JOB)
        assert job.status_code in (200, 202)  # 200: the worker was done before the API answered
        await poll(http, f"{api.url}/jobs/{job.json()['id']}", lambda r: r.json()["status"] == "Succeeded", A)
        for i in range(101):  # the job leaves the index once 100 that finished after it did
            done = await http.post(f"{api.url}/jobs", params={"wait": "30"}, headers=A, json=JOB)
            assert done.status_code == 200, done.text
        replay = await http.post(f"{api.url}/jobs", headers={**A, "Idempotency-Key": "job-1"}, json=JOB)
        assert replay.status_code == 404 and arm(replay, "OperationExpired")
    finally:
        api.stop()
