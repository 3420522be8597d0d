"""PostgreSQL stopped under a running API (CPW_API_STORE=postgresql): every route that needs it answers
503 + Retry-After, never a 5xx of its own nor a wrong 404, and all is back once PostgreSQL is."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.support import RG, A, V, poll, start_api, start_worker
from tests.postgres.test_projector import start_indexer
from tests.support.postgres import PostgresServer, installed

pytestmark = pytest.mark.rabbitmq
BODY = {"location": "westeurope", "properties": {"size": "S"}, "script": "sleep:0.05"}


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own: it is stopped and started, which the session's must not be."""
    if not installed():
        pytest.skip("PostgreSQL 15 is not installed: run `make system-deps`")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.cleanup()


def unavailable(answer: httpx.Response) -> bool:
    return answer.status_code == 503 and answer.headers.get("Retry-After") == "3"


async def test_postgres_down_answers_503_with_retry_after_and_recovers(vhost_url, own_postgres, tmp_path):
    pg = own_postgres.url()
    worker = await start_worker(vhost_url, tmp_path)
    api = await start_api(vhost_url, tmp_path, CPW_API_STORE="postgresql", CPW_POSTGRES_URL=pg, CPW_API_RETRY_AFTER=3)
    indexer = start_indexer(vhost_url, pg, tmp_path, "before", batch=64)
    try:
        async with httpx.AsyncClient(timeout=30.0) as http:
            made = await http.put(f"{api.url}{RG}/vm1", params=V, headers=A, json=BODY)
            assert made.status_code == 201, made.text
            status_url = made.headers["Azure-AsyncOperation"]
            await poll(http, status_url, lambda r: r.json()["status"] == "Succeeded", A)

            own_postgres.stop()
            assert indexer.proc.wait(10) == 1  # it exits, to be restarted (and to let go of nothing it holds)
            answers = [
                await http.get(status_url, headers=A),
                await http.get(f"{api.url}/jobs", params=V, headers=A),
                await http.put(f"{api.url}{RG}/vm2", params=V, headers=A, json=BODY),
                await http.put(f"{api.url}{RG}/vm3", params={**V, "wait": "5"}, headers=A, json=BODY),
                await http.get(made.headers["Location"], headers=A),
            ]
            assert all(unavailable(a) for a in answers), [(a.status_code, a.text) for a in answers]
            assert all(a.json()["error"]["code"] == "ServiceUnavailable" for a in answers), answers[0].text
            ready = await http.get(f"{api.ops_url}/health/ready")
            assert ready.status_code == 200  # still ready: its answers say what is wrong, a 503 per request

            own_postgres.start()
            indexer = start_indexer(vhost_url, pg, tmp_path, "after", batch=64)
            back = await poll(http, status_url, lambda r: r.status_code == 200, A)
            assert back.json()["status"] == "Succeeded"
            # ?wait= ends on the projector's NOTIFY again: the API listens on a new connection
            await http.put(f"{api.url}{RG}/vm4", params={**V, "wait": "10"}, headers=A, json=BODY)  # warm up
            asked = time.monotonic()
            waited = await http.put(f"{api.url}{RG}/vm5", params={**V, "wait": "10"}, headers=A, json=BODY)
            assert waited.status_code == 200, waited.text
            assert time.monotonic() - asked < 0.9, "ended on a NOTIFY, before the 1 s re-read"
            assert (await http.get(f"{api.ops_url}/status")).json()["index"]["listening"] is True
        assert " 500 " not in api.output()
    finally:
        api.stop()
        worker.stop()
        indexer.stop()
