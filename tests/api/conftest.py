"""Fixtures for the API suite: a worker process per test, API processes started by the tests."""

from __future__ import annotations

import httpx
import pytest

from tests.api.support import start_worker


@pytest.fixture
async def worker(vhost_url, tmp_path):
    proc = await start_worker(vhost_url, tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client
