"""A real RabbitMQ node for tests, drills and benchmarks.

Debian's rabbitmq-server on loopback, on free ports, with its own data dir, so a test run never
touches a system broker and two runs never share state. As root the node runs as the `rabbitmq`
user (Erlang refuses nothing as root, but the data dir must belong to the user that owns it).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
QUEUES = "/usr/lib/rabbitmq/bin/rabbitmq-queues"
STREAMS = "/usr/lib/rabbitmq/bin/rabbitmq-streams"
UPGRADE = "/usr/lib/rabbitmq/bin/rabbitmq-upgrade"


def management_request(base: str, user: str, password: str, method: str, path: str, body: object = None) -> Any:
    """One call of RabbitMQ's management HTTP API (`base` = http://host:port), its JSON answer or None."""
    request = urllib.request.Request(base + path, method=method)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, data=data, timeout=10) as response:
        text = response.read()
        return json.loads(text) if text else None


def free_port() -> int:
    """A port nobody listens on, below the kernel's ephemeral range.

    Port 0 would hand out an ephemeral port, which every outgoing connection of every process (a worker
    reconnecting every 0.1 s) may take as its local port before the test's server binds it: a flaky
    "address already in use". Below the range only servers bind, and they bind on purpose."""
    low = ephemeral_low()
    for _ in range(200):
        port = random.randrange(10_000, low)
        if port in _GIVEN:  # handed out already in this process, perhaps not bound yet
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.add(port)
            return port
    raise RuntimeError("no free port below the ephemeral range")


_GIVEN: set[int] = set()


def ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def amqp_answers(port: int) -> bool:
    """The AMQP listener on `port` answers the protocol header with Connection.Start (a method frame)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"AMQP\x00\x00\x09\x01")
            return conn.recv(1) == b"\x01"
    except OSError:
        return False


def installed() -> bool:
    return Path(SERVER).exists()


@dataclass
class RabbitMQServer:
    """One broker node. `start()` returns when AMQP and the management API answer."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cpw-rabbitmq-")))
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    consumer_timeout_ms: int = 1_800_000
    # Extra rabbitmq.conf lines, e.g. ["collect_statistics_interval = 500"] for drills that read the
    # management API's message counts faster than the default 5 s refresh.
    extra_config: list[str] = field(default_factory=list)
    # The Erlang cookie the nodes of one cluster share (tests/support/cluster.py); None: Erlang makes one.
    cookie: str | None = None
    process: subprocess.Popen | None = None

    @property
    def nodename(self) -> str:
        return f"cpw{self.amqp_port}@localhost"

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def _env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/lib/rabbitmq/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.base),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.base / "feature_flags"),
            "RABBITMQ_PID_FILE": str(self.base / "rabbitmq.pid"),
        }

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "rabbitmq", "--", *argv]
        return argv

    def _write_config(self) -> None:
        (self.base / "mnesia").mkdir(parents=True, exist_ok=True)
        (self.base / "log").mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}",
                    f"management.tcp.port = {self.management_port}",
                    "management.tcp.ip = 127.0.0.1",
                    f"prometheus.tcp.port = {self.prometheus_port}",
                    "prometheus.tcp.ip = 127.0.0.1",
                    "loopback_users = none",
                    f"consumer_timeout = {self.consumer_timeout_ms}",
                    "log.console = false",
                    "log.file.level = warning",
                    "vm_memory_high_watermark.relative = 0.3",
                    "disk_free_limit.absolute = 50MB",
                    *self.extra_config,
                    "",
                ]
            )
        )
        (self.base / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_prometheus].\n")
        if self.cookie is not None:
            # HOME is the base dir: the node and rabbitmqctl both read the cookie from there, and Erlang
            # refuses a cookie file that others can read.
            cookie = self.base / ".erlang.cookie"
            if cookie.exists():
                cookie.chmod(0o600)
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("rabbitmq")
            for path in [self.base, *self.base.rglob("*")]:
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def start(self, timeout: float = 60.0) -> RabbitMQServer:
        self._write_config()
        log = open(self.base / "server.out", "ab")
        self.process = subprocess.Popen(
            self._as_owner([SERVER]),
            env=self._env(),
            cwd=self.base,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the node answers on AMQP and the management API (the event, not a sleep).

        Both: once, right after a restart, the management API answered while AMQP was still refused."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited: {self.tail_log()}")
            if self._management_answers() and self._amqp_answers():
                return
            time.sleep(0.2)
        raise TimeoutError(f"rabbitmq-server not ready in {timeout}s: {self.tail_log()}")

    def _management_answers(self) -> bool:
        request = urllib.request.Request(f"http://127.0.0.1:{self.management_port}/api/overview")
        request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest, the test node's user
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def _amqp_answers(self) -> bool:
        return amqp_answers(self.amqp_port)

    def ctl(self, *args: str, timeout: float = 60.0, program: str = CTL) -> str:
        """rabbitmqctl (or another CLI tool of the node, `program`, e.g. rabbitmq-queues) against this node."""
        result = subprocess.run(
            self._as_owner([program, "-n", self.nodename, *args]),
            env=self._env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{Path(program).name} {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout

    def stop_app(self) -> None:
        """Stop the broker application but keep the node (fast restart, same data)."""
        self.ctl("stop_app")

    def start_app(self, timeout: float = 60.0) -> None:
        self.ctl("start_app")
        self.wait_ready(timeout)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop the whole node and start it again on the same ports and data dir."""
        self.stop()
        self.start(timeout)

    def close_all_connections(self) -> None:
        """Every client connection on the node, in every vhost (without --global, rabbitmqctl closes
        only the default vhost's, and the tests' own vhosts were never touched)."""
        self.ctl("close_all_connections", "--global", "test drill")

    def join(self, other: RabbitMQServer, timeout: float = 60.0) -> None:
        """Join `other`'s cluster: stop the app, join, start it again (the documented sequence)."""
        self.ctl("stop_app")
        self.ctl("join_cluster", other.nodename, timeout=timeout)
        self.start_app(timeout)

    def kill(self) -> None:
        """SIGKILL the node (the whole process group: the start script, beam and its helpers), as a
        crashed pod; its data stays, so `start()` brings the same node back."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(Exception):
            self.ctl("stop", timeout=30)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def tail_log(self, lines: int = 30) -> str:
        out = []
        for path in [self.base / "server.out", *sorted((self.base / "log").glob("*.log"))]:
            if path.exists():
                out.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out[-lines:])


def own_node(**options: Any) -> Iterator[RabbitMQServer]:
    """A node of the caller's own, for a fixture to `yield from`: drills and benchmarks stop,
    restart or load it, so it is never the shared test broker."""
    if not installed():
        import pytest

        pytest.fail("rabbitmq-server is not installed: run `make system-deps`")
    server = RabbitMQServer(**options).start()
    try:
        yield server
    finally:
        server.cleanup()
