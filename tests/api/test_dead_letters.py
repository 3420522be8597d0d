"""/deadLetters for operators: list (paged), redrive, discard; tenants get the 404 of a path that does not
exist. Real `cpw api` (two replicas) and `cpw worker` processes, a real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from tests.api.support import ROOT, A, poll, start_api, start_worker, write_tokens

from .test_errors import arm

pytestmark = pytest.mark.rabbitmq

TOKENS = {"token-a": "tenant-a", "token-ops": {"tenant": "ops", "role": "operator"}}
OPS = {"Authorization": "Bearer token-ops"}


async def submit(http, api, name: str, script: str) -> str:  # noqa: ANN001
    body = {"namespace": "Test.Scripted", "type": "things", "operation": "create"}
    body["request"] = {"resource_name": name, "body": {"script": script}}
    response = await http.post(f"{api.url}/jobs", json=body, headers=A)
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def ended(http, api, job_id: str, status: str) -> None:  # noqa: ANN001
    await poll(http, f"{api.url}/jobs/{job_id}", lambda r: r.json().get("status") == status, headers=A)


@pytest.fixture
async def apis(vhost_url, tmp_path):
    tokens = write_tokens(tmp_path, TOKENS)
    first = await start_api(vhost_url, tmp_path, CPW_API_TOKENS_FILE=tokens)
    second = await start_api(vhost_url, tmp_path, CPW_API_TOKENS_FILE=tokens)
    worker = await start_worker(vhost_url, tmp_path)
    yield first, second
    for proc in (worker, second, first):
        proc.stop()
    assert "Traceback" not in first.output() + second.output()


@pytest.mark.timeout(120)
async def test_operators_list_redrive_and_discard_dead_letters(apis, http, tmp_path):
    api, other = apis
    once = [tmp_path / f"calls-{i}" for i in range(2)]
    ids = [await submit(http, api, f"once-{i}", f"poison-once:{once[i]}") for i in range(2)]
    ids.append(await submit(http, api, "always", "poison"))
    for job_id in ids:
        await ended(http, api, job_id, "Failed")
    await poll(http, f"{api.url}/stats", lambda r: r.json()["deadLetters"] == 3, headers=OPS)

    # Listed, paged, oldest first, with reason, job, attempts and time; a peek changes nothing.
    first = await http.get(f"{api.url}/deadLetters", params={"top": "2"}, headers=OPS)
    assert first.status_code == 200, first.text
    page = first.json()
    assert len(page["value"]) == 2 and "skipToken=2" in page["nextLink"]
    rest = (await http.get(page["nextLink"], headers=OPS)).json()
    assert len(rest["value"]) == 1 and rest["nextLink"] is None
    letters = page["value"] + rest["value"]
    assert sorted(letter["id"] for letter in letters) == sorted(ids)
    for letter in letters:
        assert letter["reason"] == "permanent-error" and letter["attempts"] == 1
        assert letter["deadLetteredAt"].endswith("Z") and letter["detail"]
        assert letter["job"] == {
            "namespace": "Test.Scripted",
            "type": "things",
            "operation": "create",
            "tenant": "tenant-a",
        }
    again = (await http.get(f"{other.url}/deadLetters", headers=OPS)).json()
    assert [letter["id"] for letter in again["value"]] == [letter["id"] for letter in letters]

    # Redrive: the job runs again, from attempt 1, and succeeds.
    redriven = await http.post(f"{api.url}/deadLetters/{ids[0]}/redrive", headers=OPS)
    assert redriven.status_code == 200 and redriven.json()["id"] == ids[0], redriven.text
    await ended(http, api, ids[0], "Succeeded")
    assert len(once[0].read_text().splitlines()) == 2

    # Two operators redrive one letter at once, through two replicas: one job.
    both = await asyncio.gather(
        http.post(f"{api.url}/deadLetters/{ids[1]}/redrive", headers=OPS),
        http.post(f"{other.url}/deadLetters/{ids[1]}/redrive", headers=OPS),
    )
    assert sorted(r.status_code for r in both) == [200, 404], [r.text for r in both]
    arm(next(r for r in both if r.status_code == 404), "DeadLetterNotFound")
    await ended(http, api, ids[1], "Succeeded")
    await poll(http, f"{api.url}/stats", lambda r: r.json()["ready"] == 0, headers=OPS)
    assert len(once[1].read_text().splitlines()) == 2

    # Discard: gone for good; the job stays Failed; a second discard or a redrive is 404.
    discarded = await http.delete(f"{api.url}/deadLetters/{ids[2]}", headers=OPS)
    assert discarded.status_code == 204, discarded.text
    assert (await http.get(f"{api.url}/deadLetters", headers=OPS)).json() == {"value": [], "nextLink": None}
    assert (await http.get(f"{api.url}/jobs/{ids[2]}", headers=A)).json()["status"] == "Failed"
    for method, path in (("DELETE", ids[2]), ("POST", f"{ids[2]}/redrive"), ("POST", "no-such-job/redrive")):
        missing = await http.request(method, f"{api.url}/deadLetters/{path}", headers=OPS)
        assert missing.status_code == 404 and arm(missing, "DeadLetterNotFound"), (method, path)


BAD = [
    ("GET", "/deadLetters?top=0"),
    ("GET", "/deadLetters?top=1001"),
    ("GET", "/deadLetters?top=abc"),
    ("GET", "/deadLetters?skipToken=-1"),
    ("GET", "/deadLetters?skipToken=" + "9" * 10),
    ("GET", "/deadLetters?skipToken=abc"),
    ("POST", "/deadLetters/-x/redrive"),
    ("POST", "/deadLetters/" + "x" * 201 + "/redrive"),
    ("DELETE", "/deadLetters/a%20b"),
    ("DELETE", "/deadLetters/a;b"),
]


async def test_bad_parameters_are_400_and_tenants_see_no_dead_letter_routes(vhost_url, tmp_path, http):
    api = await start_api(vhost_url, tmp_path, CPW_API_TOKENS_FILE=write_tokens(tmp_path, TOKENS))
    try:
        for method, path in BAD:
            response = await http.request(method, f"{api.url}{path}", headers=OPS)
            assert response.status_code == 400, (method, path, response.text)
            assert arm(response, "InvalidParameter")["details"][0]["target"] in ("top", "skipToken", "id")
        nowhere = await http.get(f"{api.url}/noSuchRoute", headers=A)
        routes = [("GET", "/deadLetters"), ("POST", "/deadLetters/x/redrive"), ("DELETE", "/deadLetters/x")]
        for method, path in [*routes, *BAD]:
            response = await http.request(method, f"{api.url}{path}", headers=A)
            assert (response.status_code, response.json()) == (404, nowhere.json()), (method, path)
    finally:
        api.stop()


async def test_without_tokens_the_dead_letter_routes_are_open_as_everything_else(vhost_url, tmp_path, http):
    """Dev mode (no CPW_API_TOKENS_FILE): the API trusts whoever reaches it, and these routes too."""
    api = await start_api(vhost_url, tmp_path, CPW_API_TOKENS_FILE=None, CPW_API_ALLOW_ANONYMOUS="true")
    try:
        response = await http.get(f"{api.url}/deadLetters")
        assert response.status_code == 200 and response.json() == {"value": [], "nextLink": None}
    finally:
        api.stop()


async def cpw_dlq(api, *args: str, token: str) -> tuple[int, str, str]:  # noqa: ANN001
    path = os.pathsep.join(str(p) for p in (ROOT, ROOT / "worker", ROOT / "api-adapter"))
    env = {**os.environ, "CPW_API_TOKEN": token, "PYTHONPATH": path, "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controlplane_workers.cli",
        "dlq",
        *args,
        "--api",
        api.url,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.timeout(120)
async def test_cpw_dlq_works_through_the_api(apis, http):
    api, _ = apis
    ids = [await submit(http, api, f"cli-{i}", "poison") for i in range(3)]
    for job_id in ids:
        await ended(http, api, job_id, "Failed")
    await poll(http, f"{api.url}/stats", lambda r: r.json()["deadLetters"] == 3, headers=OPS)
    code, out, err = await cpw_dlq(api, "list", "--json", "--limit", "2", token="token-ops")
    assert code == 0, err
    listed = json.loads(out)
    assert len(listed) == 2 and {letter["id"] for letter in listed} < set(ids)
    code, out, err = await cpw_dlq(api, "list", token="token-ops")
    assert code == 0 and "3 dead letters" in out and "permanent-error" in out, err
    code, out, err = await cpw_dlq(api, "discard", ids[0], "no-such-job", token="token-ops")
    assert (code, out.strip()) == (0, "discarded: 1"), err
    code, out, err = await cpw_dlq(api, "redrive", "--all", token="token-ops")
    assert (code, out.strip()) == (0, "redriven: 2"), err
    for job_id in ids[1:]:  # they run again, fail again and are dead letters again
        await poll(http, f"{api.url}/jobs/{job_id}", lambda r: r.json()["attempts"] == 1, headers=A)
    await poll(http, f"{api.url}/stats", lambda r: r.json()["deadLetters"] == 2, headers=OPS)
    code, out, err = await cpw_dlq(api, "list", token="token-a")  # a tenant's token: the routes are not there
    assert code == 1 and "404 NotFound" in err, (out, err)
