"""Tenants are held apart on the resource routes too: subscriptions per token, the provider keyed by
tenant, paging by skipToken. Real `cpw api` and `cpw worker` processes, a real RabbitMQ."""

from __future__ import annotations

import pytest

from tests.api.support import RG, A, B, V, start_api

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
