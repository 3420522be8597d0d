"""Delayed jobs through the API and `cpw jobs`: x-cpw-delay / ?delay= / the body's delay, notBefore in
the views, cancel while waiting, and every bad delay a 400 naming the limit."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.api.support import RG, A, V, poll, start_api
from tests.api.test_cli import cpw

pytestmark = pytest.mark.rabbitmq
LIMIT = 60  # CPW_JOB_MAX_DELAY of the API under test


@pytest.fixture
async def api(vhost_url, tmp_path):
    proc = await start_api(vhost_url, tmp_path, CPW_JOB_MAX_DELAY=LIMIT)
    yield proc
    proc.stop()


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def job(name: str, **extra: object) -> dict:
    return {
        "namespace": "Test.Scripted",
        "type": "things",
        "operation": "create",
        "request": {"subscription_id": "sub-1", "resource_name": name, "body": {"script": "ok"}},
        **extra,
    }


async def test_a_delayed_put_shows_when_it_starts_and_starts_no_earlier(api, worker, http):
    before = time.time()
    response = await http.put(f"{api.url}{RG}/later", params=V, headers={**A, "x-cpw-delay": "1.5"}, json={})
    assert response.status_code == 201
    job_id = response.json()["jobId"]
    operation = (await http.get(f"{api.url}/operations/{job_id}", headers=A)).json()
    assert operation["status"] == "Accepted"
    not_before = seconds(operation["properties"]["notBefore"])
    assert before + 1.5 <= not_before < time.time() + 1.5
    done = await poll(http, f"{api.url}/jobs/{job_id}", lambda r: r.json()["status"] == "Succeeded", A)
    assert (
        seconds(done.json()["startedAt"]) >= not_before
        and done.json()["notBefore"] == operation["properties"]["notBefore"]
    )
    plain = await http.put(f"{api.url}{RG}/now", params=V, headers=A, json={})
    shown = (await http.get(f"{api.url}/jobs/{plain.json()['jobId']}", headers=A)).json()
    assert shown["notBefore"] is None


async def test_cancel_while_waiting_answers_canceled_at_once(api, worker, http):
    response = await http.post(f"{api.url}/jobs", headers=A, json=job("called-off", delay=30))
    assert response.status_code == 202 and response.json()["status"] == "Accepted"
    assert response.json()["notBefore"] is not None
    job_id = response.json()["id"]
    canceled = await http.delete(f"{api.url}/jobs/{job_id}", params={"wait": "10"}, headers=A)
    # within ?wait, 30 s before the job's time: the API recorded Canceled, no worker had to see it
    assert canceled.status_code == 200 and canceled.json()["status"] == "Canceled"
    assert canceled.json()["error"]["code"] == "Canceled" and canceled.json()["attempts"] == 0
    again = await http.delete(f"{api.url}/jobs/{job_id}", headers=A)
    assert again.status_code == 409


async def test_the_maximum_delay_is_accepted_and_every_bad_delay_is_a_400_naming_it(api, http):
    at_limit = await http.put(f"{api.url}{RG}/at", params={**V, "delay": str(LIMIT)}, headers=A, json={})
    assert at_limit.status_code == 201
    body_at_limit = await http.post(f"{api.url}/jobs", headers=A, json=job("at", delay=LIMIT))
    assert body_at_limit.status_code == 202
    bad = ["60.001", "61", "-1", "abc", "NaN", "inf", "1e3", "١٢", "²", "99999999999", "", "5 5", "0x10", "5s"]
    for value in bad:
        for where in ("header", "query"):
            if where == "header":
                response = await http.delete(f"{api.url}{RG}/x", params=V, headers={**A, "x-cpw-delay": value.encode()})
                target = "x-cpw-delay"
            else:
                response = await http.delete(f"{api.url}{RG}/x", params={**V, "delay": value}, headers=A)
                target = "delay"
            assert response.status_code == 400, (where, value, response.text)
            error = response.json()["error"]
            assert error["details"][0]["target"] == target
            assert f"from 0 to {LIMIT} (the maximum delay, CPW_JOB_MAX_DELAY)" in error["message"], error
    for value in (60.5, -1, 10**30):
        response = await http.post(f"{api.url}/jobs", headers=A, json=job("bad", delay=value))
        assert response.status_code == 400 and "CPW_JOB_MAX_DELAY" in response.json()["error"]["message"], value
    for value in ("5", True, [], {}):  # not a number: the body's schema names the field
        response = await http.post(f"{api.url}/jobs", headers=A, json=job("bad", delay=value))
        assert response.status_code == 400 and response.json()["error"]["details"][0]["target"] == "delay", value
    raw = b'{"namespace": "Test.Scripted", "type": "things", "operation": "create", "delay": 1e400}'
    response = await http.post(f"{api.url}/jobs", headers={**A, "Content-Type": "application/json"}, content=raw)
    assert response.status_code == 400, response.text
    keyed = {**A, "Idempotency-Key": "k1", "x-cpw-delay": "5"}
    assert (await http.put(f"{api.url}{RG}/k", params=V, headers=keyed, json={})).status_code == 201
    other = await http.put(f"{api.url}{RG}/k", params=V, headers={**keyed, "x-cpw-delay": "6"}, json={})
    assert other.status_code == 422  # another delay is another request
    jobs = (await http.get(f"{api.url}/jobs", headers=A)).json()["value"]
    assert len(jobs) == 3  # the two at the limit and the keyed one


async def test_cpw_jobs_submit_delay_and_cancel(api, http):
    code, submitted, _ = await cpw(api, "submit", "Test.Scripted", "things", "create", "--name", "c1", "--delay", "30")
    assert code == 0 and submitted["status"] == "Accepted" and submitted["notBefore"] is not None
    code, canceled, _ = await cpw(api, "cancel", submitted["id"], "--wait", "10")
    assert code == 0 and canceled["status"] == "Canceled"
    code, _, err = await cpw(api, "submit", "Test.Scripted", "things", "create", "--delay", "61")
    assert code == 1 and "CPW_JOB_MAX_DELAY" in err
