"""The per-tenant submission rate limit over real HTTP: a burst, then 429 + Retry-After for that tenant
only. Real `cpw api`, a real RabbitMQ (no worker: the jobs stay queued)."""

from __future__ import annotations

import pytest

from tests.api.support import RG, A, B, V, start_api

from .test_errors import arm

pytestmark = pytest.mark.rabbitmq
BURST = 5


async def test_burst_plus_one_is_429_with_retry_after_and_other_tenants_go_on(vhost_url, tmp_path, http):
    # 0.2/s: a token every 5 s, so none comes back while the burst is sent
    api = await start_api(vhost_url, tmp_path, CPW_API_TENANT_RATE=0.2, CPW_API_TENANT_BURST=BURST)
    try:
        for i in range(BURST):
            made = await http.put(f"{api.url}{RG}/a{i}", params=V, headers=A, json={})
            assert made.status_code == 201, made.text
        over = await http.put(f"{api.url}{RG}/a-over", params=V, headers=A, json={})
        assert over.status_code == 429 and arm(over, "TooManyRequests")
        assert 1 <= int(over.headers["Retry-After"]) <= 5, over.headers
        again = await http.post(
            f"{api.url}/jobs", headers=A, json={"namespace": "N.S", "type": "t", "operation": "create"}
        )
        assert again.status_code == 429  # every route that makes a job is paced, POST /jobs too
        assert (await http.put(f"{api.url}{RG}/b", params=V, headers=B, json={})).status_code == 201
        listed = (await http.get(f"{api.url}/jobs", headers=A)).json()["value"]
        assert len(listed) == BURST  # the refused submissions made no job; reads are not paced
        metrics = (await http.get(f"{api.ops_url}/metrics")).text
        assert 'cpw_api_tenant_rate_limited_total{tenant="tenant-a"} 2.0' in metrics
        assert 'cpw_api_rejections_total{reason="tenant_rate"} 2.0' in metrics
        assert 'tenant="tenant-b"' not in metrics
    finally:
        api.stop()
