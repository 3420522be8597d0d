"""The OpenTelemetry collector a value set's OTLP endpoint names, reduced to its OTLP/HTTP receiver.

A value set with `global.tracing.otlpEndpoint` expects a collector at that address. Without one the pods
still run, but every export fails and the exporter retries for seconds on shutdown; with this sink the pods
reach it under the endpoint's own name (cluster.py routes it) and the test can see spans arrive. Every POST
is counted by path and answered 200 with an empty (valid) protobuf response.
"""

from __future__ import annotations

import http.server
import socketserver
import threading
from collections import Counter
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests[self.path] += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def address_string(self) -> str:
        return "pod"  # a Unix socket has no client address

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    requests: Counter[str]


class OtlpSink:
    """An OTLP/HTTP receiver on a Unix socket, serving from a thread until closed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server = _Server(str(path), _Handler)
        self._server.requests = Counter()
        path.chmod(0o777)  # the pods' relays connect as the pod's user
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True)
        self._thread.start()

    @property
    def requests(self) -> Counter[str]:
        return self._server.requests

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
