"""Run `cpw api` / `cpw worker` as real processes (uvicorn over real HTTP) for the API tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.rabbitmq import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"token-a": "tenant-a", "token-b": "tenant-b"}
A = {"Authorization": "Bearer token-a"}
B = {"Authorization": "Bearer token-b"}
NS = "Test.Scripted"
RG = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Test.Scripted/things"
V = {"api-version": "2024-01-01"}


def write_tokens(directory: Path, tokens: dict[str, str] | None = None) -> Path:
    path = directory / "tokens.json"
    path.write_text(json.dumps(tokens or TOKENS))
    return path


def _env(broker_url: str, extra: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPW_") or k.startswith("CPW_TEST_")}
    env.update(
        {
            # This tree's code, whatever checkout the venv's editable install points at.
            "PYTHONPATH": os.pathsep.join(str(p) for p in (ROOT, ROOT / "worker", ROOT / "api-adapter")),
            "CPW_RABBITMQ_URL": broker_url,
            "CPW_LOG_FORMAT": "text",
            "CPW_LOG_LEVEL": "WARNING",
            "CPW_API_HOST": "127.0.0.1",
            "CPW_HEALTH_HOST": "127.0.0.1",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Proc:
    proc: subprocess.Popen
    log: Path
    port: int = 0
    ops_port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "controlplane_workers.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def wait_ready(proc: Proc, url: str, timeout: float = 30.0) -> None:
    """Poll the readiness probe: the process says when it is ready."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            if proc.proc.poll() is not None:
                raise AssertionError(f"process exited {proc.proc.returncode}:\n{proc.output()[-3000:]}")
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if loop.time() > deadline:
                raise AssertionError(f"not ready in {timeout}s:\n{proc.output()[-3000:]}")
            await asyncio.sleep(0.05)


async def start_api(broker_url: str, tmp: Path, *, ready: bool = True, **settings: Any) -> Proc:
    port, ops_port = free_port(), free_port()
    extra = {"CPW_API_PORT": port, "CPW_HEALTH_PORT": ops_port, **settings}
    if "CPW_API_TOKENS_FILE" not in extra:
        extra["CPW_API_TOKENS_FILE"] = write_tokens(tmp)
    env = _env(broker_url, {k: v for k, v in extra.items() if v is not None})  # None: leave the setting unset
    log = tmp / f"api-{port}.log"
    proc = Proc(spawn(["api"], env, log), log, port, ops_port, env)
    if ready:
        await wait_ready(proc, f"{proc.ops_url}/health/ready")
    return proc


async def start_worker(broker_url: str, tmp: Path, *, ready_timeout: float = 30.0, **settings: Any) -> Proc:
    ops_port = free_port()
    extra = {
        "CPW_PROVIDERS": "tests.support.providers:registry",
        "CPW_HEALTH_PORT": ops_port,
        "CPW_RUNNING_EVENT_DELAY": 0,
        "CPW_HEARTBEAT_INTERVAL": 0.2,
        "CPW_RETRY_BASE_DELAY": 0.05,
        "CPW_MAX_CONCURRENT_JOBS": 50,
        **settings,
    }
    log = tmp / f"worker-{ops_port}.log"
    proc = Proc(spawn(["worker"], _env(broker_url, extra), log), log, 0, ops_port)
    await wait_ready(proc, f"{proc.ops_url}/health/ready", timeout=ready_timeout)
    return proc


async def poll(http: httpx.AsyncClient, url: str, until, headers=None, timeout: float = 20.0):  # noqa: ANN001
    """GET `url` until `until(response)` holds (a poller as a client would write it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        response = await http.get(url, headers=headers)
        if until(response):
            return response
        if loop.time() > deadline:
            raise AssertionError(f"{url}: last answer {response.status_code} {response.text[:500]}")
        await asyncio.sleep(0.02)
