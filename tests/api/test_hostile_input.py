"""Hostile input gets a 4xx naming the field, never a 500: unicode digits, huge numbers, deep JSON,
api-version on the polling routes. Against one real `cpw api` (auth on) and a real RabbitMQ."""

from __future__ import annotations

import asyncio

import pytest

from controlplane_api.params import MAX_JSON_DEPTH
from tests.api.support import RG, A, V, start_api

from .test_errors import arm

pytestmark = pytest.mark.rabbitmq

HUGE = "9" * 5000  # past Python's int() digit limit (4300): int(HUGE) raises


@pytest.fixture(scope="module")
async def api(rabbitmq, tmp_path_factory):
    vhost = rabbitmq.new_vhost()
    proc = await start_api(rabbitmq.url_for(vhost), tmp_path_factory.mktemp("hostile"), CPW_API_TENANT_MAX_QUEUED=1000)
    yield proc
    proc.stop()
    rabbitmq.delete_vhost(vhost)


def nested(depth: int) -> bytes:
    """A JSON object `depth` containers deep (the object itself is depth 1), written out by hand: the
    json encoders stop before 1,024 levels."""
    return b'{"a":[' * ((depth - 1) // 2) + (b'{"a":{}}' if depth % 2 == 0 else b"{}") + b"]}" * ((depth - 1) // 2)


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("top", ["²", "٣", "1²", HUGE, "0", "1001", "-1", " 5", "5 "])
async def test_top_is_ascii_digits_in_range(api, http, top):
    response = await http.get(f"{api.url}/jobs", params={"top": top}, headers=A)
    assert response.status_code == 400, response.text
    assert arm(response, "InvalidParameter")["details"][0]["target"] == "top"


@pytest.mark.parametrize("value", ["²", "٣", HUGE, "10", "-1", "+1"])
async def test_priority_query_is_ascii_digits_in_range(api, http, value):
    response = await http.put(f"{api.url}{RG}/p", params={**V, "priority": value}, headers=A, json={})
    assert response.status_code == 400, response.text
    assert arm(response, "InvalidParameter")["details"][0]["target"] == "priority"


@pytest.mark.parametrize("value", [b"\xb2", b"\xc2\xb2", HUGE.encode(), b"10", b"1.0"])
async def test_priority_header_is_ascii_digits_in_range(api, http, value):
    # b"\xb2" is "²" as Starlette decodes headers (latin-1)
    response = await http.put(f"{api.url}{RG}/p", params=V, headers={**A, "x-ms-priority": value}, json={})
    assert response.status_code == 400, response.text
    assert arm(response, "InvalidParameter")["details"][0]["target"] == "x-ms-priority"


async def test_valid_numbers_still_accepted(api, http):
    assert (await http.get(f"{api.url}/jobs", params={"top": "1000"}, headers=A)).status_code == 200
    response = await http.put(f"{api.url}{RG}/p9", params={**V, "priority": "9"}, headers=A, json={})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "depth, status", [(MAX_JSON_DEPTH, 201), (MAX_JSON_DEPTH + 1, 400), (254, 400), (300, 400), (1024, 400)]
)
async def test_put_body_nesting_is_bounded(api, http, depth, status):
    body = b'{"properties":' + nested(depth - 1) + b"}"  # the body object itself is one level
    response = await http.put(f"{api.url}{RG}/deep", params=V, headers={**A, **JSON}, content=body)
    assert response.status_code == status, response.text[:300]
    if status == 400:
        error = arm(response, "InvalidRequestContent")
        assert str(MAX_JSON_DEPTH) in error["message"] and error["details"][0]["target"] == "body"


@pytest.mark.parametrize("depth, status", [(MAX_JSON_DEPTH, 202), (MAX_JSON_DEPTH + 1, 400), (1024, 400)])
async def test_job_body_nesting_is_bounded(api, http, depth, status):
    # {"request": {"body": ...}}: the submission object is level 1, request 2, body 3
    job = b'{"namespace":"Test.Scripted","type":"things","operation":"create","request":{"body":'
    response = await http.post(f"{api.url}/jobs", headers={**A, **JSON}, content=job + nested(depth - 2) + b"}}")
    assert response.status_code == status, response.text[:300]
    if status == 400:
        assert str(MAX_JSON_DEPTH) in arm(response, "InvalidRequestContent")["message"]


async def test_deep_action_body_and_no_500_anywhere(api, http):
    bodies = [nested(d) for d in (MAX_JSON_DEPTH + 1, 1024)]
    url = f"{api.url}{RG}/x/restart"
    answers = await asyncio.gather(*(http.post(url, params=V, headers={**A, **JSON}, content=b) for b in bodies))
    assert [r.status_code for r in answers] == [400, 400]
    metrics = (await http.get(f"{api.ops_url}/metrics")).text
    assert 'code="500"' not in metrics


@pytest.mark.parametrize("version", ["latest", "2024-01-01&x=1", "2024-01-01\r\nX: y", "x" * 300])
async def test_operation_results_validates_api_version(api, http, version):
    job_id = (await http.put(f"{api.url}{RG}/v", params=V, headers=A, json={})).json()["jobId"]
    response = await http.get(f"{api.url}/operationResults/{job_id}", params={"api-version": version}, headers=A)
    assert response.status_code == 400, response.text
    assert arm(response, "InvalidApiVersionParameter")["details"][0]["target"] == "api-version"
    assert version not in response.headers.get("Location", "")


async def test_operation_results_keeps_a_valid_or_absent_api_version(api, http):
    job_id = (await http.put(f"{api.url}{RG}/v2", params=V, headers=A, json={})).json()["jobId"]
    response = await http.get(f"{api.url}/operationResults/{job_id}", params=V, headers=A)
    assert response.status_code == 202 and response.headers["Location"].endswith("?api-version=2024-01-01")
    response = await http.get(f"{api.url}/operationResults/{job_id}", headers=A)
    assert response.status_code == 202 and "api-version" not in response.headers["Location"]


async def test_idempotency_key_with_another_priority_is_not_a_replay(api, http):
    url, key = f"{api.url}{RG}/idem-q", {"Idempotency-Key": "q-1"}
    first = await http.delete(url, params={**V, "priority": "1"}, headers={**A, **key})
    again = await http.delete(url, params={**V, "priority": "1", "wait": "0"}, headers={**A, **key})
    assert first.status_code == again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["jobId"] == first.json()["jobId"]  # ?wait says how long to wait, not what to do
    other = await http.delete(url, params={**V, "priority": "2"}, headers={**A, **key})
    assert other.status_code == 422, other.text
    arm(other, "IdempotencyKeyReused")
    header = await http.delete(url, params=V, headers={**A, **key, "x-ms-priority": "2"})
    assert header.status_code == 422, header.text
