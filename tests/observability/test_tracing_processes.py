"""Real `cpw api` and `cpw worker` processes, traced by OTEL_* alone, export one trace over OTLP/HTTP.

A small OTLP/HTTP receiver on loopback stands in for the collector; the processes get nothing but
`OTEL_EXPORTER_OTLP_ENDPOINT` (and a short batch delay), as the chart sets it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.api.support import RG, A, V, start_api, start_worker

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(120)]


@dataclass
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]


class OtlpReceiver:
    """Accepts OTLP/HTTP protobuf trace exports on 127.0.0.1 and keeps the spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    receiver._add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _add(self, request: Any) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            resource.get("service.name", ""),
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.kind,
                            {a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        with self.lock:
            self.spans.extend(spans)

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    async def wait_for(self, condition: Callable[[list[ReceivedSpan]], Any], timeout: float = 30.0) -> Any:
        """Poll what arrived (exports come in batches every OTEL_BSP_SCHEDULE_DELAY)."""
        async with asyncio.timeout(timeout):
            while not (result := condition(self.snapshot())):
                await asyncio.sleep(0.05)
            return result

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
def collector():
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


async def test_processes_configured_by_otel_env_export_one_trace(vhost_url, tmp_path, collector):
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    worker = await start_worker(vhost_url, tmp_path, CPW_LOG_FORMAT="json", CPW_LOG_LEVEL="INFO", **otel)
    api = await start_api(vhost_url, tmp_path, **otel)
    try:
        async with httpx.AsyncClient(timeout=30.0) as http:
            flaky = await http.put(f"{api.url}{RG}/flaky", params=V, headers=A, json={"script": "fail:1"})
            doomed = await http.put(f"{api.url}{RG}/doomed", params=V, headers=A, json={"script": "poison"})
        assert flaky.status_code == doomed.status_code == 201, (flaky.text, doomed.text)
        flaky_id, doomed_id = flaky.json()["jobId"], doomed.json()["jobId"]

        def job_trace(job_id: str, attempts: int) -> Callable[[list[ReceivedSpan]], Any]:
            def condition(spans: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
                [server] = [s for s in spans if s.attributes.get("cpw.job.id") == job_id and s.kind == 2] or [None]
                if server is None:
                    return None
                mine = [s for s in spans if s.trace_id == server.trace_id]
                done = [s for s in mine if s.name.startswith("process ") and "cpw.job.outcome" in s.attributes]
                return mine if len(done) == attempts else None

            return condition

        spans = await collector.wait_for(job_trace(flaky_id, 2))
        doomed_spans = await collector.wait_for(job_trace(doomed_id, 1))
    finally:
        api.stop()
        worker.stop()

    by_service: dict[str, list[str]] = {}
    for span in spans:
        by_service.setdefault(span.service, []).append(span.name)
    assert sorted(by_service["cpw-api"]) == sorted(
        [
            "PUT /subscriptions/{subscription}/resourceGroups/{resourceGroup}/providers/{namespace}/{type}/{name}",
            "publish provider.exchange",
        ]
    ), by_service
    assert sorted(by_service["cpw-worker"]) == sorted(
        [
            "process provider.jobs",
            "provider Test.Scripted/things create",
            "publish provider.jobs.retry.2",
            "process provider.jobs",
            "provider Test.Scripted/things create",
        ]
    ), by_service
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id not in ids]
    assert [r.name.split()[0] for r in roots] == ["PUT"]  # every other span hangs under the request

    # The worker's JSON log line about the dead-lettered job carries that job's trace.
    [process] = [s for s in doomed_spans if s.name == "process provider.jobs"]
    lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    [line] = [entry for entry in lines if entry.get("job_id") == doomed_id and "dead-lettering" in entry["message"]]
    assert (line["trace_id"], line["span_id"]) == (process.trace_id, process.span_id)
