"""A three-node RabbitMQ cluster on loopback behind haproxy, for cluster drills.

Production RabbitMQ is a cluster behind a Kubernetes Service; here three `RabbitMQServer` nodes share
one Erlang cookie, nodes 2 and 3 join node 1, and Debian's haproxy stands in for the Service: clients
get one AMQP URL, haproxy health-checks each node with the AMQP handshake and cuts the sessions of a
node marked down, so a client reconnects to a live node as it would through the Service.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.rabbitmq import (
    QUEUES,
    STREAMS,
    UPGRADE,
    RabbitMQServer,
    amqp_answers,
    free_port,
    installed,
    management_request,
)

HAPROXY = "/usr/sbin/haproxy"
# The AMQP 0-9-1 protocol header; a live broker answers with Connection.Start, a method frame (type 1).
_AMQP_HEADER_HEX = b"AMQP\x00\x00\x09\x01".hex()


@dataclass
class HAProxy:
    """A TCP load balancer over the nodes' AMQP ports, health-checked every `inter_ms`."""

    backends: list[tuple[str, int]]
    base: Path
    port: int = field(default_factory=free_port)
    inter_ms: int = 300
    process: subprocess.Popen | None = None

    def config(self) -> str:
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{port} check inter {self.inter_ms}ms fall 2 rise 2"
            for name, port in self.backends
        )
        return f"""\
global
    maxconn 4096

defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout check 1s

listen amqp
    bind 127.0.0.1:{self.port}
    balance roundrobin
    default-server on-marked-down shutdown-sessions
    option tcp-check
    tcp-check connect
    tcp-check send-binary {_AMQP_HEADER_HEX}
    tcp-check expect rbinary ^01
{servers}
"""

    def start(self) -> HAProxy:
        self.base.mkdir(parents=True, exist_ok=True)
        path = self.base / "haproxy.cfg"
        path.write_text(self.config())
        subprocess.run([HAPROXY, "-c", "-q", "-f", str(path)], check=True, capture_output=True, timeout=30)
        log = open(self.base / "haproxy.out", "ab")
        # -db: foreground, no daemon, so this Popen is the process to stop.
        self.process = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


@dataclass
class RabbitMQCluster:
    """Three nodes, one cookie, joined to node 1, and haproxy in front (`amqp_url`)."""

    size: int = 3
    extra_config: list[str] = field(default_factory=list)
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cpw-cluster-")))
    nodes: list[RabbitMQServer] = field(default_factory=list)
    proxy: HAProxy | None = None

    def start(self, timeout: float = 120.0) -> RabbitMQCluster:
        cookie = secrets.token_hex(16).upper()
        self.base.chmod(0o755)  # the nodes run as the rabbitmq user and live below it
        self.nodes = [
            RabbitMQServer(base=self.base / f"node{i + 1}", cookie=cookie, extra_config=list(self.extra_config))
            for i in range(self.size)
        ]
        # The nodes start in parallel (~10 s each on 2 cores), then join one at a time: a join changes
        # the cluster's membership, which RabbitMQ serialises anyway.
        with concurrent.futures.ThreadPoolExecutor(self.size) as pool:
            for future in [pool.submit(node.start, timeout) for node in self.nodes]:
                future.result()
        for node in self.nodes[1:]:
            node.join(self.nodes[0], timeout)
        running = self.running_nodes()
        assert sorted(running) == sorted(n.nodename for n in self.nodes), running
        self.proxy = HAProxy([(f"n{i + 1}", n.amqp_port) for i, n in enumerate(self.nodes)], self.base / "haproxy")
        self.proxy.start()
        self.wait_proxy(timeout)
        return self

    @property
    def amqp_url(self) -> str:
        assert self.proxy is not None
        return f"amqp://guest:guest@127.0.0.1:{self.proxy.port}/"

    def wait_proxy(self, timeout: float = 30.0) -> None:
        """Until haproxy passes the AMQP handshake to a node (its first health check passed)."""
        assert self.proxy is not None
        deadline = time.monotonic() + timeout
        while not amqp_answers(self.proxy.port):
            if time.monotonic() > deadline:
                raise TimeoutError("haproxy never reached a node")
            time.sleep(0.1)

    def live(self) -> RabbitMQServer:
        """A node that is running (for management API calls)."""
        for node in self.nodes:
            if node.process is not None and node._management_answers():  # noqa: SLF001
                return node
        raise RuntimeError("no live node")

    def management(self, method: str, path: str, body: object | None = None) -> Any:
        node = self.live()
        return management_request(f"http://127.0.0.1:{node.management_port}", "guest", "guest", method, path, body)

    def running_nodes(self) -> list[str]:
        return [n["name"] for n in self.management("GET", "/api/nodes") if n.get("running")]

    def queue(self, name: str, vhost: str = "/") -> dict[str, Any]:
        quote = urllib.parse.quote
        return self.management("GET", f"/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}")

    def leader(self, name: str, vhost: str = "/") -> RabbitMQServer:
        """The node that leads a quorum queue or a stream (`leader`; `node` for a classic queue)."""
        info = self.queue(name, vhost)
        nodename = info.get("leader") or info.get("node")
        return self.node(nodename)

    def node(self, nodename: str) -> RabbitMQServer:
        for node in self.nodes:
            if node.nodename == nodename:
                return node
        raise KeyError(nodename)

    def kill(self, node: RabbitMQServer) -> None:
        """SIGKILL one node (a crashed pod); haproxy marks it down and cuts its client sessions."""
        node.kill()

    def restart(self, node: RabbitMQServer, timeout: float = 120.0) -> None:
        """Start a killed node again on its ports and data: it rejoins the cluster by itself."""
        node.start(timeout)

    def add_vhost(self, vhost: str) -> str:
        """A vhost of its own for one drill (fresh declarations, leaders placed anew); returns its AMQP URL."""
        quoted = urllib.parse.quote(vhost, safe="")
        self.management("PUT", f"/api/vhosts/{quoted}", {})
        self.management("PUT", f"/api/permissions/{quoted}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
        # Each node starts the vhost on its own; a connection through haproxy to a node that has not yet
        # is closed at open (seen on a node that had just joined).
        deadline = time.monotonic() + 30
        while set((self.management("GET", f"/api/vhosts/{quoted}").get("cluster_state") or {}).values()) != {"running"}:
            if time.monotonic() > deadline:
                raise TimeoutError(f"vhost {vhost} not running on every node")
            time.sleep(0.2)  # the management API has no event for it
        return self.amqp_url + quoted

    def delete_vhost(self, vhost: str) -> None:
        """A drill's vhost, with its queues: fewer quorum queues for the next drill's membership changes."""
        self.management("DELETE", f"/api/vhosts/{urllib.parse.quote(vhost, safe='')}")

    def stream_members(self, name: str, vhost: str) -> list[dict[str, Any]]:
        """`rabbitmq-streams stream_status`: each member's role, node, offset and committed offset."""
        live = next(n for n in self.nodes if n.process is not None)
        return json.loads(live.ctl("stream_status", name, "--vhost", vhost, "--formatter", "json", program=STREAMS))

    def stream_in_sync(self, name: str, vhost: str) -> bool:
        """Every member of the stream has what its writer has (offsets as `stream_status` reports them)."""
        members = self.stream_members(name, vhost)
        writer = [m["offset"] for m in members if m["role"] == "writer"]
        return len(members) == self.size and bool(writer) and all(m["offset"] >= writer[0] for m in members)

    def wait_rejoined(
        self,
        node: RabbitMQServer,
        quorum: list[tuple[str, str]],
        streams: Sequence[tuple[str, str]] = (),
        timeout: float = 120.0,
    ) -> None:
        """Until `node` runs in the cluster, is back online in each (vhost, quorum queue or stream), and
        each (vhost, stream) has caught up on every member: what an operator waits for before it
        restarts the next pod."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ok = (
                    node.nodename in self.running_nodes()
                    and all(node.nodename in (self.queue(name, vhost).get("online") or []) for vhost, name in quorum)
                    and all(self.stream_in_sync(name, vhost) for vhost, name in streams)
                )
            except (OSError, RuntimeError, ValueError):
                ok = False
            if ok:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.nodename} did not rejoin in {timeout}s")
            time.sleep(0.2)

    def roll(self, node: RabbitMQServer, timeout: float = 120.0) -> None:
        """A graceful restart of one node (a pod of an operator upgrade): the operator's preStop check
        (`rabbitmq-upgrade await_online_quorum_plus_one`), `rabbitmqctl stop`, start again."""
        node.ctl("await_online_quorum_plus_one", "-t", str(int(timeout)), timeout=timeout + 10, program=UPGRADE)
        node.stop()
        node.start(timeout)

    def lose(self, node: RabbitMQServer) -> None:
        """A node lost for good: killed, its data dir removed, and forgotten by the cluster (from a live node).

        Forgetting shrinks the quorum queues to the live members and deletes the classic queues whose
        home it was, with their messages; streams keep listing it as a member (RabbitMQ 3.10)."""
        node.kill()
        shutil.rmtree(node.base / "mnesia", ignore_errors=True)
        live = next(n for n in self.nodes if n is not node and n.process is not None)
        # Forgetting shrinks every quorum queue of every vhost, one at a time: with the DLQ and the delay
        # queues quorum too it took over a minute on 2 vCPU.
        live.ctl("forget_cluster_node", node.nodename, timeout=300)

    def replace(self, node: RabbitMQServer, timeout: float = 120.0) -> None:
        """A fresh node under the lost one's name (a StatefulSet pod on a new, empty volume): it joins
        at boot through peer discovery, as the operator's pods do, so it never serves clients alone;
        then the quorum queues grow back onto it (RabbitMQ does not do that by itself)."""
        others = [n.nodename for n in self.nodes if n is not node]
        node.extra_config = [
            *node.extra_config,
            "cluster_formation.peer_discovery_backend = classic_config",
            *(f"cluster_formation.classic_config.nodes.{i + 1} = {name}" for i, name in enumerate(others)),
        ]
        node.start(timeout)
        self.grow(node, timeout)

    def grow(self, node: RabbitMQServer, timeout: float = 120.0) -> str:
        """Add `node` to every quorum queue that lacks it (`rabbitmq-queues grow`); returns what it said."""
        return node.ctl("grow", node.nodename, "all", timeout=timeout, program=QUEUES)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        with concurrent.futures.ThreadPoolExecutor(max(len(self.nodes), 1)) as pool:
            list(pool.map(lambda n: n.stop(), self.nodes))

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def own_cluster(**options: Any) -> Iterator[RabbitMQCluster]:
    """A cluster of the caller's own, for a fixture to `yield from`."""
    if not installed() or not Path(HAPROXY).exists():
        import pytest

        pytest.fail("rabbitmq-server or haproxy is not installed: run `make system-deps`")
    cluster = RabbitMQCluster(**options)
    try:
        yield cluster.start()
    finally:
        with contextlib.suppress(Exception):
            cluster.cleanup()
