"""A real Prometheus (Debian's `prometheus`) on loopback for the end-to-end tests.

Its own free port and data dir, the scrape and rule configuration the test writes; `start()` returns
once `/-/ready` answers. Queries go through the HTTP API, as Grafana's and Alertmanager's do.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.rabbitmq import free_port

BINARY = "/usr/bin/prometheus"


def installed() -> bool:
    return Path(BINARY).exists()


@dataclass
class PrometheusServer:
    config: dict[str, Any]
    rule_files: list[Path] = field(default_factory=list)
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cpw-prometheus-")))
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        config = {**self.config, "rule_files": [str(p) for p in self.rule_files]}
        (self.base / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = open(self.base / "prometheus.log", "ab")
        self.process = subprocess.Popen(
            [
                BINARY,
                f"--config.file={self.base / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.base / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.base,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.process.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready in {timeout}s: {self.tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def tail(self, lines: int = 30) -> str:
        path = self.base / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # -- HTTP API
    async def api(self, http: httpx.AsyncClient, path: str, **params: str) -> Any:
        response = await http.get(f"{self.url}/api/v1/{path}", params=params)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {response.status_code} {body}")
        return body["data"]

    async def query(self, http: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
        """An instant query at now; the result vector (scalar results come back as one sample)."""
        data = await self.api(http, "query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    async def targets(self, http: httpx.AsyncClient) -> list[dict[str, Any]]:
        return (await self.api(http, "targets", state="active"))["activeTargets"]

    async def alerts(self, http: httpx.AsyncClient) -> list[dict[str, Any]]:
        return (await self.api(http, "alerts"))["alerts"]
