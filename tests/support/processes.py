"""Real `cpw` processes for integration tests, drills and benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.rabbitmq import free_port

ROOT = Path(__file__).resolve().parents[2]


def cpw_executable() -> str:
    local = Path(sys.executable).with_name("cpw")
    return str(local) if local.exists() else (shutil.which("cpw") or "cpw")


@dataclass
class CpwProcess:
    """`cpw worker` or `cpw api` with its own ops port; stdout/stderr go to a log file."""

    command: str
    env: dict[str, str]
    log_path: Path
    health_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    started_at: float = 0.0

    def start(self) -> CpwProcess:
        pythonpath = os.pathsep.join(str(p) for p in (ROOT, ROOT / "worker", ROOT / "api-adapter"))
        env = {
            **os.environ,
            "PYTHONPATH": pythonpath,
            "CPW_HEALTH_PORT": str(self.health_port),
            "CPW_HEALTH_HOST": "127.0.0.1",
            **self.env,
        }
        self.started_at = time.monotonic()
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [cpw_executable(), self.command], env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        return self

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Poll /health/ready (the process has no other way to tell); returns seconds from start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"cpw {self.command} exited {self.process.returncode}: {self.tail()}")
            try:
                if httpx.get(self.ops_url + "/health/ready", timeout=0.5).status_code == 200:
                    return time.monotonic() - self.started_at
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"cpw {self.command} not ready in {timeout}s: {self.tail()}")

    def status(self) -> dict:
        return httpx.get(self.ops_url + "/status", timeout=5).json()

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def worker_env(url: str, **extra: str) -> dict[str, str]:
    return {
        "CPW_RABBITMQ_URL": url,
        "CPW_PROVIDERS": "tests.support.providers:registry",
        "CPW_RETRY_BASE_DELAY": "0.05",
        "CPW_RETRY_JITTER": "0",
        "CPW_HEARTBEAT_INTERVAL": "0.5",
        "CPW_LOG_LEVEL": "INFO",
        **extra,
    }
