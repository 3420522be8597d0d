"""Both ports of a real `cpw api` bound what an unauthenticated client can hold (issue 17, item 6).

Before: 32 MB of unfinished headers grew the process by 260 MB, and a half-sent header held a
connection for 90+ s. Now: 431 past CPW_HTTP_MAX_HEADER_BYTES, 408 past CPW_HTTP_HEADER_TIMEOUT, 503 past
the port's connection limit, and the server answers again once the held connections are gone.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.api.support import A, start_api
from tests.support.proc import rss_bytes

pytestmark = pytest.mark.rabbitmq

HEADER_TIMEOUT = 2.0
MAX_CONNECTIONS = 6


@pytest.fixture(scope="module")
async def api(rabbitmq, tmp_path_factory):
    vhost = rabbitmq.new_vhost()
    proc = await start_api(
        rabbitmq.url_for(vhost),
        tmp_path_factory.mktemp("limits"),
        CPW_HTTP_HEADER_TIMEOUT=HEADER_TIMEOUT,
        CPW_OPS_MAX_CONNECTIONS=MAX_CONNECTIONS,
        CPW_API_MAX_CONNECTIONS=MAX_CONNECTIONS,
    )
    yield proc
    proc.stop()
    rabbitmq.delete_vhost(vhost)


def port_of(api, which: str) -> int:  # noqa: ANN001
    return api.port if which == "api" else api.ops_port


PATH = {"api": "/jobs", "ops": "/health/live"}


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""


@pytest.mark.parametrize("which", ["api", "ops"])
async def test_headers_past_the_limit_answer_431(api, which):
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api, which))
    writer.write(f"GET {PATH[which]} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode() + b"a" * 100_000)
    await writer.drain()
    answer = await read_all(reader, 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


@pytest.mark.parametrize("which", ["api", "ops"])
async def test_32_mb_of_unfinished_headers_are_cut_off_and_memory_stays_bounded(api, which):
    before = rss_bytes(api.proc.pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api, which))
    writer.write(f"GET {PATH[which]} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode())
    sent, chunk, cut_off = 0, b"a" * 65536, False
    try:
        while sent < 32 * 2**20:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 5)
            sent += len(chunk)
    except (ConnectionResetError, BrokenPipeError):
        cut_off = True
    writer.close()
    grown = rss_bytes(api.proc.pid) - before
    assert cut_off, f"the server read all {sent} bytes of headers"
    assert grown < 16 * 2**20, f"the process grew by {grown} bytes"


@pytest.mark.parametrize("which", ["api", "ops"])
async def test_a_half_sent_header_is_closed_after_the_header_timeout(api, which):
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(api, which))
    writer.write(f"GET {PATH[which]} HTTP/1.1\r\nHost: x\r\nX-Slow: a".encode())
    await writer.drain()
    answer = await read_all(reader, HEADER_TIMEOUT + 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < HEADER_TIMEOUT + 2


@pytest.mark.parametrize("which", ["api", "ops"])
async def test_connections_past_the_limit_get_503_and_the_port_recovers(api, which):
    port = port_of(api, which)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
    url = f"http://127.0.0.1:{port}{PATH[which]}"
    async with httpx.AsyncClient(timeout=10.0) as http:
        busy = await http.get(url, headers=A)
        assert busy.status_code == 503, busy.text
        for _, writer in held:  # the silent connections are closed by the header timeout
            writer.close()
        await asyncio.sleep(0.2)
        again = await http.get(url, headers=A)
    assert again.status_code == 200, again.text
