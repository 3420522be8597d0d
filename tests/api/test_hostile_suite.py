"""A hostile client against one real `cpw api` (auth on): malformed tokens of every shape, bodies at and over
every limit, odd methods and paths. Every answer is a 4xx (or the success it should be), never a 5xx or a
traceback, and the process's memory stays bounded while it runs. Huge and slow headers: test_http_limits.py."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from tests.api.support import RG, A, V, start_api, write_tokens
from tests.api.support import TOKENS as SUPPORT_TOKENS
from tests.support.proc import rss_bytes

from .test_errors import arm

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(180)]
LIMIT = 65_536  # CPW_API_MAX_BODY_BYTES for this API: small, so the bodies at and over it stay cheap


@pytest.fixture(scope="module")
async def api(rabbitmq, tmp_path_factory):
    vhost = rabbitmq.new_vhost()
    tmp = tmp_path_factory.mktemp("hostile-suite")
    tokens = write_tokens(tmp, {**SUPPORT_TOKENS, "token-ops": {"tenant": "ops", "role": "operator"}})
    proc = await start_api(
        rabbitmq.url_for(vhost),
        tmp,
        CPW_API_MAX_BODY_BYTES=LIMIT,
        CPW_API_TENANT_MAX_QUEUED=100_000,
        CPW_API_TOKENS_FILE=tokens,
    )
    yield proc
    proc.stop()
    rabbitmq.delete_vhost(vhost)


async def raw_status(api, head: bytes, body: bytes = b"{}") -> int:
    """Send one PUT as bytes (what no well-behaved client sends); the answer's status, 0 if the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        start = f"PUT {RG}/raw?api-version=2024-01-01 HTTP/1.1\r\nHost: t\r\n".encode()
        writer.write(start + head + b"\r\n\r\n" + body)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1]) if line else 0
    finally:
        writer.close()


TOKENS = [
    "",
    "Bearer",
    "bearer token-x",
    "Bearer token-a token-a",
    "Basic " + base64.b64encode(b"token-a:").decode(),
    "Token token-a",
    "Bearer " + "a" * 16_000,
    "Bearer ' OR 1=1 --",
    "Bearer ../../etc/passwd",
    "Negotiate YIIB",
    ",".join(["Bearer token-a"] * 3),
]
# (A tab after the token is optional whitespace to HTTP: "Bearer token-a\t" is token-a, rightly.)
RAW_TOKENS = [
    b"Bearer ",
    b"Bearer  ",
    "Bearer tøken-ä".encode(),
    b"Bearer token-\xe9",
    b"Bearer \x7f",
    b"Bearer \x00token-a",
    b"Bearer token-a\x80\xff",
]


@pytest.mark.parametrize("authorization", TOKENS)
async def test_every_malformed_token_is_a_401_without_detail(api, http, authorization):
    response = await http.put(f"{api.url}{RG}/t", params=V, headers={"Authorization": authorization}, content=b"{}")
    arm(response, "AuthenticationFailed")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "token-a" not in response.text


@pytest.mark.parametrize("authorization", RAW_TOKENS)
async def test_tokens_no_client_would_send_are_refused_with_a_4xx(api, authorization):
    status = await raw_status(api, b"Content-Length: 2\r\nAuthorization: " + authorization)
    assert status == 0 or 400 <= status < 500, status


async def test_bodies_at_and_over_the_limit(api, http):
    padding = LIMIT - len(b'{"location":"w","properties":{"p":""}}')
    at_limit = b'{"location":"w","properties":{"p":"' + b"x" * padding + b'"}}'
    assert len(at_limit) == LIMIT
    ok = await http.put(f"{api.url}{RG}/at-limit", params=V, headers=A, content=at_limit)
    assert ok.status_code == 201, ok.text
    over = await http.put(f"{api.url}{RG}/over", params=V, headers=A, content=at_limit + b" ")
    assert over.status_code == 413 and arm(over, "RequestEntityTooLarge")

    async def chunks(total: int):  # no Content-Length: the limit holds for a streamed body too
        sent = 0
        while sent < total:
            piece = min(8192, total - sent)
            sent += piece
            yield b" " * piece

    streamed = await http.put(f"{api.url}{RG}/streamed", params=V, headers=A, content=chunks(4 * LIMIT))
    assert streamed.status_code == 413
    for length in (b"-1", b"abc", b"1" * 30, str(LIMIT + 1).encode(), b"2, 2"):
        status = await raw_status(api, b"Authorization: Bearer token-a\r\nContent-Length: " + length)
        assert status == 0 or 400 <= status < 500, (length, status)


@pytest.mark.parametrize(
    "body",
    [b"", b"null", b"[]", b'"x"', b"1e999999", b'{"location": 1}', b'{"tags": {"a": 1}}', b"\xff\xfe", b"{" * 10_000,
     b'{"a":"\\ud800"}', b'{"location": "' + b"x" * 201 + b'"}', b"{}" * 100],
)  # fmt: skip
async def test_malformed_bodies_are_400(api, http, body):
    response = await http.put(f"{api.url}{RG}/body", params=V, headers=A, content=body)
    assert response.status_code == 400, (body[:40], response.status_code, response.text[:200])
    arm(response)


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/jobs"), ("TRACE", "/jobs"), ("GET", "/%00"), ("GET", "/jobs/" + "x" * 5000), ("GET", "/jobs/%ff"),
     ("GET", RG + "/" + "n" * 300), ("GET", "/subscriptions/../../etc"), ("OPTIONS", RG + "/x"),
     ("GET", "/operations/" + "0" * 32), ("DELETE", "/jobs/%2e%2e"), ("GET", "/deadLetters?top=-1"),
     ("POST", "/deadLetters/%00/redrive"), ("DELETE", "/deadLetters/" + "x" * 5000), ("PUT", "/deadLetters"),
     ("POST", "/deadLetters/../jobs/redrive")],
)  # fmt: skip
async def test_odd_methods_and_paths_are_4xx(api, http, method, path):
    response = await http.request(method, f"{api.url}{path}", params=V, headers=A)
    assert 400 <= response.status_code < 500, (method, path, response.status_code)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/deadLetters?top=0"), ("GET", "/deadLetters?skipToken=%00"), ("GET", "/deadLetters?top=1e3"),
     ("POST", "/deadLetters/%00/redrive"), ("POST", "/deadLetters/" + "x" * 5000 + "/redrive"),
     ("DELETE", "/deadLetters/%ff"), ("DELETE", "/deadLetters/no-such-job"), ("POST", "/deadLetters/x%2fy/redrive"),
     ("PUT", "/deadLetters/x"), ("GET", "/deadLetters/x/redrive")],
)  # fmt: skip
async def test_an_operators_odd_dead_letter_requests_are_4xx(api, http, method, path):
    response = await http.request(method, f"{api.url}{path}", headers={"Authorization": "Bearer token-ops"})
    assert 400 <= response.status_code < 500, (method, path, response.status_code, response.text[:200])


async def test_memory_stays_bounded_and_nothing_answered_5xx(api):
    """Many hostile requests in a row: the process grows by little, no 5xx is counted, no traceback logged."""
    before = rss_bytes(api.proc.pid)
    big = b'{"location":"w","properties":{"p":"' + b"y" * (LIMIT - 60) + b'"}}'
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(300):
            bad = {"Authorization": TOKENS[i % len(TOKENS)]}
            await http.put(f"{api.url}{RG}/m{i % 7}", params=V, headers=bad, content=big)
            await http.put(f"{api.url}{RG}/m{i % 7}", params=V, headers=A, content=big + b"!")
        metrics = (await http.get(f"{api.ops_url}/metrics")).text
    grown_mib = (rss_bytes(api.proc.pid) - before) / 2**20
    print(f"hostile suite: RSS grew {grown_mib:.1f} MiB over 600 requests with {LIMIT // 1024} KiB bodies")
    assert grown_mib < 40
    assert not any(line.startswith("cpw_api_requests_total") and 'code="5' in line for line in metrics.splitlines())
    assert "Traceback" not in api.output()
