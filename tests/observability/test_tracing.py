"""One trace from the HTTP request to the provider call, through a real RabbitMQ, across retries.

The API (`serve_api`: uvicorn on a real port, the Starlette instrumentation) and a worker run in this
process with the test's TracerProvider; the trace context crosses the broker in the job's AMQP headers
only, exactly as between processes. test_tracing_processes.py runs the same path in real `cpw`
processes configured by OTEL_* alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import pytest

from controlplane_api.routes.resources import RESOURCE
from controlplane_api.settings import load_api_settings
from controlplane_workers import tracing
from controlplane_workers.logs import JsonFormatter
from tests.api.support import RG, V, write_tokens
from tests.observability.spans import SpanRecorder
from tests.support.harness import running_worker
from tests.support.providers import registry
from tests.support.rabbitmq import free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(90)]

A = {"Authorization": "Bearer token-a"}


@pytest.fixture
def recorder():
    recorder = SpanRecorder()
    tracing.enable(recorder.provider)
    yield recorder
    tracing.disable()
    recorder.shutdown()


class JsonLines(logging.Handler):
    """Keeps the worker's log lines as the JSON formatter writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def worker_logs():
    handler = JsonLines()
    logger = logging.getLogger("controlplane_workers.worker")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
async def api(vhost_url, tmp_path, recorder):
    from controlplane_api.serve import serve_api

    port = free_port()
    settings = load_api_settings(
        rabbitmq_url=vhost_url,
        api_host="127.0.0.1",
        api_port=port,
        health_host="127.0.0.1",
        health_port=free_port(),
        api_tokens_file=write_tokens(tmp_path),
        worker_id="api-test",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve_api(settings, stop))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=30.0) as http:
        async with asyncio.timeout(30):  # ready = the index is rebuilt; the route answers 503 until then
            while (await _get_or_none(http, f"{url}/jobs", A)) != 200:
                assert not task.done(), task
                await asyncio.sleep(0.05)
        yield url, http
    stop.set()
    await task


async def _get_or_none(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int | None:
    try:
        return (await http.get(url, headers=headers)).status_code
    except httpx.TransportError:
        return None


def by_name(spans: Sequence[Any], prefix: str, trace_id: int) -> list[Any]:
    return [s for s in spans if s.name.startswith(prefix) and s.context.trace_id == trace_id]


def parent_of(span: Any) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def put(api, name: str, script: str, traceparent: str | None = None) -> str:
    """PUT a resource (201 Accepted); the job id."""
    url, http = api
    headers = {**A, "x-ms-client-request-id": f"client-{name}", **({"traceparent": traceparent} if traceparent else {})}
    response = await http.put(
        f"{url}{RG}/{name}", params=V, headers=headers, json={"location": "westeurope", "script": script}
    )
    assert response.status_code == 201, response.text
    return response.json()["jobId"]


def finished_attempts(job_id: str, count: int):  # noqa: ANN201
    """A wait_for condition: the job's `count` process spans, each with its outcome recorded."""

    def condition(spans: Sequence[Any]) -> list[Any] | None:
        mine = [s for s in spans if s.name.startswith("process ") and s.attributes.get("cpw.job.id") == job_id]
        done = [s for s in mine if "cpw.job.outcome" in s.attributes]
        return sorted(done, key=lambda s: s.attributes["cpw.job.attempt"]) if len(done) == count else None

    return condition


async def test_one_trace_from_http_request_to_provider_call(api, recorder, vhost_url):
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    client = recorder.provider.get_tracer("test-client")
    async with running_worker(vhost_url, registry):
        with client.start_as_current_span("client PUT", kind=SpanKind.CLIENT) as client_span:
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
            job_id = await put(api, "ok-1", "ok", carrier["traceparent"])
        trace_id = client_span.get_span_context().trace_id
        assert trace.get_current_span() is trace.INVALID_SPAN
        await recorder.wait_for(finished_attempts(job_id, 1))
    spans = recorder.spans

    server = [s for s in spans if s.kind is SpanKind.SERVER and s.context.trace_id == trace_id]
    assert len(server) == 1, [s.name for s in recorder.spans]
    server = server[0]
    assert server.name == "PUT " + RESOURCE
    assert parent_of(server) == client_span.get_span_context().span_id
    assert server.attributes["cpw.job.id"] == job_id
    # the ARM request ids on the request's span (the Azure SDK's attribute names): one call, followed end to end
    assert server.attributes["az.client_request_id"] == "client-ok-1"
    assert server.attributes["az.correlation_request_id"] == server.attributes["az.service_request_id"]

    [publish] = by_name(spans, "publish provider.exchange", trace_id)
    [process] = by_name(spans, "process provider.jobs", trace_id)
    [provider] = by_name(spans, "provider Test.Scripted/things create", trace_id)
    assert publish.kind is SpanKind.PRODUCER and parent_of(publish) == server.context.span_id
    assert process.kind is SpanKind.CONSUMER and parent_of(process) == publish.context.span_id
    assert provider.kind is SpanKind.INTERNAL and parent_of(provider) == process.context.span_id
    assert publish.attributes["messaging.message.id"] == job_id == process.attributes["cpw.job.id"]
    assert publish.attributes["messaging.rabbitmq.destination.routing_key"] == "Test.Scripted.things.create"
    assert process.attributes["cpw.job.attempt"] == 1 and process.attributes["cpw.job.outcome"] == "succeeded"
    assert provider.status.is_ok
    assert not [s for s in spans if s.name.endswith(("http send", "http receive"))]  # one span per request
    # Nothing of the job is outside the trace: one trace id from the client to the provider.
    assert {s.context.trace_id for s in (server, publish, process, provider)} == {trace_id}


async def test_a_retried_job_keeps_its_trace_across_attempts(api, recorder, vhost_url):
    from opentelemetry.trace import SpanKind, StatusCode

    async with running_worker(vhost_url, registry):
        job_id = await put(api, "flaky-1", "fail:1")
        first, second = await recorder.wait_for(finished_attempts(job_id, 2))

    trace_id = first.context.trace_id
    assert second.context.trace_id == trace_id
    [server] = [s for s in recorder.spans if s.kind is SpanKind.SERVER and s.context.trace_id == trace_id]
    [publish] = by_name(recorder.spans, "publish provider.exchange", trace_id)
    [retry] = by_name(recorder.spans, "publish provider.jobs.retry.2", trace_id)
    providers = sorted(by_name(recorder.spans, "provider ", trace_id), key=lambda s: s.attributes["cpw.job.attempt"])
    assert [p.attributes["cpw.job.attempt"] for p in providers] == [1, 2]

    # request -> publish -> attempt 1 -> its retry publish -> attempt 2: one chain, one trace.
    assert parent_of(publish) == server.context.span_id
    assert parent_of(first) == publish.context.span_id
    assert parent_of(retry) == first.context.span_id and retry.kind is SpanKind.PRODUCER
    assert parent_of(second) == retry.context.span_id
    assert (first.attributes["cpw.job.attempt"], second.attributes["cpw.job.attempt"]) == (1, 2)
    assert (first.attributes["cpw.job.outcome"], second.attributes["cpw.job.outcome"]) == ("error", "succeeded")
    assert providers[0].status.status_code is StatusCode.ERROR
    assert "transient failure on attempt 1" in providers[0].status.description
    assert providers[1].status.is_ok
    assert retry.attributes["cpw.job.attempt"] == 2


async def test_a_dead_lettered_job_and_its_log_lines_carry_the_trace(api, recorder, vhost_url, worker_logs):
    from opentelemetry.trace import StatusCode

    async with running_worker(vhost_url, registry):
        job_id = await put(api, "doomed-1", "poison")
        [process] = await recorder.wait_for(finished_attempts(job_id, 1))
    [dlx] = by_name(recorder.spans, "publish provider.dlx", process.context.trace_id)

    assert parent_of(dlx) == process.context.span_id
    assert dlx.attributes["cpw.dead_letter.reason"] == "permanent-error"
    assert process.attributes["cpw.job.outcome"] == "failed"
    [provider] = by_name(recorder.spans, "provider ", process.context.trace_id)
    assert provider.status.status_code is StatusCode.ERROR
    trace_id = process.context.trace_id
    [server] = [s for s in recorder.spans if s.name.startswith("PUT ") and s.context.trace_id == trace_id]

    # The worker's JSON log line about it names the trace and the span it was written in.
    [line] = [entry for entry in worker_logs.lines if entry["message"].startswith("dead-lettering job")]
    assert line["trace_id"] == format(process.context.trace_id, "032x")
    assert line["span_id"] == format(process.context.span_id, "016x")
    assert server.context.trace_id == process.context.trace_id


async def test_no_trace_context_in_the_headers_when_tracing_is_off(vhost_url):
    """Off (the default): a job carries no trace headers and a log line no trace ids."""
    import aio_pika

    from controlplane_workers import JobQueue

    assert not tracing.enabled
    async with JobQueue(vhost_url, replay_from="next") as queue:
        await queue.submit_job("Test.Any", "things", "create", {"resource_name": "x"})
    connection = await aio_pika.connect(vhost_url)
    try:
        channel = await connection.channel()
        jobs = await channel.declare_queue("provider.jobs", passive=True)
        message = await jobs.get(timeout=10)
        assert message is not None
        assert "x-cpw-job-id" in message.headers and not {"traceparent", "tracestate"} & set(message.headers)
    finally:
        await connection.close()
    record = logging.LogRecord("controlplane_workers.worker", logging.WARNING, __file__, 1, "plain", None, None)
    assert "trace_id" not in orjson.loads(JsonFormatter().format(record))
