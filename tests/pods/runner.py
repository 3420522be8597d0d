"""A kubelet for one rendered pod: volumes, env, the sandbox, probes, preStop and SIGTERM, from the manifest.

`PodRun` starts the pod's single container under bubblewrap with the rendered user and group, its own PID,
UTS and network namespaces (see relay.py for how the network is wired), the root read-only, the volumes at
their mount paths and the cluster's /etc/hosts. A `Prober` thread then calls the declared startup probe at its
period, then readiness and liveness at theirs, and records what the kubelet would conclude.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.pods import kube
from tests.pods.rootfs import root_args

RELAY = Path(__file__).with_name("relay.py")


@dataclass
class ProbeLog:
    """What the kubelet concluded: when the container started and became ready, and every probe's result."""

    started: threading.Event = field(default_factory=threading.Event)
    alive: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)
    killed: threading.Event = field(default_factory=threading.Event)
    passed: dict[str, int] = field(default_factory=lambda: {"startup": 0, "readiness": 0, "liveness": 0})
    failures: list[str] = field(default_factory=list)


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state in the network namespace of `pid` (what a Service's targetPort must hit)."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class PodRun:
    """One pod (its single container) under bwrap."""

    pod: kube.Pod
    image_env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    venv: Path
    workdir: Path
    hosts: str
    outbound: list[tuple[str, int, str]]
    netdir: Path  # the cluster's sockets (every pod's, the broker relay's), bound into every pod
    process: subprocess.Popen | None = None
    log: ProbeLog = field(default_factory=ProbeLog)
    started_at: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod.spec["containers"]
        assert len(containers) == 1, f"{self.pod.name}: one container per pod is what the runner models"
        return containers[0]

    def socket(self, port: int) -> Path:
        """A short path per pod and port: a socket's path must fit 107 bytes, and pytest's temp dirs are deep."""
        return self.netdir / f"{zlib.crc32(self.pod.name.encode()):08x}" / f"{port}.sock"

    def env(self) -> dict[str, str]:
        return kube.container_env(self.pod, self.container, self.image_env)

    def argv(self) -> list[str]:
        """command/args, else the image's ENTRYPOINT/CMD (a `command` drops CMD too), $(VAR)-expanded."""
        container, env = self.container, self.env()
        command = container.get("command", self.entrypoint)
        args = container.get("args", self.cmd if "command" not in container else [])
        return [kube.expand(a, env) for a in [*command, *args]]

    def _user(self) -> tuple[int, int]:
        pod_context = self.pod.spec.get("securityContext", {})
        context = {**pod_context, **self.container.get("securityContext", {})}
        uid, gid = int(context.get("runAsUser", 10001)), int(context.get("runAsGroup", 10001))
        assert not (context.get("runAsNonRoot") and uid == 0), f"{self.pod.name}: runAsNonRoot with uid 0"
        return uid, gid

    def _mounts(self) -> list[str]:
        """bwrap mount arguments for the container's volumeMounts (file volumes written under workdir)."""
        volumes = {v["name"]: v for v in self.pod.spec.get("volumes", [])}
        args: list[str] = []
        for mount in self.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            # bwrap builds the mounts before pivoting into the root, so an absolute symlink on the way
            # (/var/run -> /run) would resolve on the host: the destination is given with symlinks resolved.
            path = os.path.realpath(mount["mountPath"])
            if "emptyDir" in volume:
                assert "subPath" not in mount, "subPath of an emptyDir is not modelled"
                size = volume["emptyDir"].get("sizeLimit")
                args += [*(["--size", str(int(kube.quantity(size)))] if size else []), "--perms", "1777"]
                args += ["--tmpfs", path]
                continue
            source = self._volume_files(mount, volume)
            args += ["--ro-bind" if mount.get("readOnly") else "--bind", str(source), path]
        account = self.workdir / "volumes" / "kube-api-access"
        if kube.service_account_files(self.pod, account):
            args += ["--ro-bind", str(account), os.path.realpath(kube.SERVICE_ACCOUNT_DIR)]
        return args

    def _volume_files(self, mount: dict[str, Any], volume: dict[str, Any]) -> Path:
        """Where a file volume's mount is written on the host (once per volume, as the kubelet does)."""
        source = self.workdir / "volumes" / mount["name"]
        if not source.exists():
            kube.materialize(self.pod, volume, source)
        return source / mount["subPath"] if mount.get("subPath") else source

    def file(self, path: str) -> bytes:
        """A file the container reads from one of its file volumes (what it finds at `path`), before or after start."""
        volumes = {v["name"]: v for v in self.pod.spec.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            root = mount["mountPath"].rstrip("/")
            if path.startswith(root + "/") and "emptyDir" not in volumes[mount["name"]]:
                return (self._volume_files(mount, volumes[mount["name"]]) / path[len(root) + 1 :]).read_bytes()
        raise AssertionError(f"{self.pod.name}: {path} is on none of its file volumes")

    def command(self) -> list[str]:
        uid, gid = self._user()
        mounts = [m["mountPath"] for m in self.container.get("volumeMounts", [])] + [kube.SERVICE_ACCOUNT_DIR]
        hosts = self.workdir / "hosts"
        hosts.write_text(self.hosts)
        self.socket(0).parent.mkdir(parents=True, exist_ok=True)
        relay = {
            "inbound": [[str(self.socket(p)), p] for p in self._reachable_ports()],
            "outbound": [list(o) for o in self.outbound],
        }
        config = self.workdir / "relay.json"
        config.write_text(json.dumps(relay))
        argv = ["bwrap", "--unshare-user", "--uid", str(uid), "--gid", str(gid)]
        argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--hostname", self.pod.name]
        argv += ["--as-pid-1", "--die-with-parent", "--cap-drop", "ALL"]
        argv += root_args([*mounts, str(self.venv), str(self.workdir)])
        argv += self._mounts()
        argv += ["--ro-bind", str(self.venv), str(self.venv), "--ro-bind", str(hosts), "/etc/hosts"]
        argv += ["--ro-bind", str(RELAY), str(self.workdir / "relay.py"), "--ro-bind", str(config), str(config)]
        argv += ["--bind", str(self.netdir), str(self.netdir)]
        argv += ["--remount-ro", "/", "--chdir", self.container.get("workingDir", "/")]
        python = str(self.venv / "bin" / "python")
        return [*argv, python, str(self.workdir / "relay.py"), str(config), "--", *self.argv()]

    def ports(self) -> list[int]:
        return [int(p["containerPort"]) for p in self.container.get("ports", [])]

    def _reachable_ports(self) -> list[int]:
        """Declared ports plus any port a probe names: the kubelet reaches the pod IP on any port."""
        ports = set(self.ports())
        for kind in ("startup", "readiness", "liveness"):
            action = (self.container.get(f"{kind}Probe") or {}).get("httpGet") or {}
            if "port" in action:
                try:
                    ports.add(kube.named_port(self.container, action["port"]))
                except AssertionError:
                    pass  # a probe naming a port that does not exist: it fails when called
        return sorted(ports)

    def start(self) -> PodRun:
        argv = self.command()
        self.started_at = time.monotonic()
        out = open(self.workdir / "container.log", "ab")
        self.process = subprocess.Popen(argv, env=self.env(), stdout=out, stderr=subprocess.STDOUT)
        out.close()
        if any(k in self.container for k in ("startupProbe", "readinessProbe", "livenessProbe")):
            self._thread = threading.Thread(target=self._probe_loop, name=f"prober-{self.pod.name}", daemon=True)
            self._thread.start()
        return self

    def output(self) -> str:
        path = self.workdir / "container.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def pid(self) -> int:
        """The container's PID 1 on the host: bwrap's child (bwrap --as-pid-1 execs the command there)."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert children, f"{self.pod.name}: bwrap has no child (exited {self.process.poll()})"
        return int(children[0])

    # -- probes ---------------------------------------------------------------------------------------------

    def probe_once(self, probe: dict[str, Any]) -> str | None:
        """None when the probe succeeds, else why it failed (HTTP 200-399, or a listening TCP port)."""
        timeout = float(probe.get("timeoutSeconds", 1))
        if "tcpSocket" in probe:
            port = kube.named_port(self.container, probe["tcpSocket"]["port"])
            return None if port in listening_ports(self.pid()) else f"nothing listens on {port}"
        get = probe["httpGet"]
        try:
            port = kube.named_port(self.container, get["port"])
        except AssertionError as error:
            return str(error)
        scheme = get.get("scheme", "HTTP")
        assert scheme == "HTTP", f"{scheme} probes are not modelled"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
        transport = httpx.HTTPTransport(uds=str(self.socket(port)))
        try:
            with httpx.Client(transport=transport, timeout=timeout) as client:
                status = client.get(f"http://{self.pod.pod_ip}:{port}{get.get('path', '/')}", headers=headers)
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"
        return None if 200 <= status.status_code < 400 else f"HTTP {status.status_code}"

    def _run_probe(self, kind: str, probe: dict[str, Any], state: dict[str, int]) -> bool | None:
        """One probe call; True on the success threshold, False on the failure threshold, else None."""
        error = self.probe_once(probe)
        if error is None:
            self.log.passed[kind] += 1
            state["ok"], state["bad"] = state["ok"] + 1, 0
            return True if state["ok"] >= int(probe.get("successThreshold", 1)) else None
        state["ok"], state["bad"] = 0, state["bad"] + 1
        self.log.failures.append(f"{kind}: {error}")
        return False if state["bad"] >= int(probe.get("failureThreshold", 3)) else None

    def _probe_loop(self) -> None:
        container = self.container
        startup = container.get("startupProbe")
        if startup:
            if self._stop.wait(float(startup.get("initialDelaySeconds", 0))):
                return
            state = {"ok": 0, "bad": 0}
            while not self._stop.is_set():
                result = self._run_probe("startup", startup, state)
                if result is True:
                    break
                if result is False:
                    self.log.killed.set()
                    return
                self._stop.wait(float(startup.get("periodSeconds", 10)))
        self.log.started.set()
        periodic = [(k, container[f"{k}Probe"]) for k in ("readiness", "liveness") if f"{k}Probe" in container]
        next_at = {k: time.monotonic() + float(p.get("initialDelaySeconds", 0)) for k, p in periodic}
        states = {k: {"ok": 0, "bad": 0} for k, _ in periodic}
        if "readiness" not in next_at:
            self.log.ready.set()
        if "liveness" not in next_at:
            self.log.alive.set()
        while not self._stop.is_set():
            now = time.monotonic()
            for kind, probe in periodic:
                if now >= next_at[kind]:
                    result = self._run_probe(kind, probe, states[kind])
                    if kind == "readiness" and result is True:
                        self.log.ready.set()
                    if kind == "liveness" and self.log.passed["liveness"]:
                        self.log.alive.set()
                    if kind == "liveness" and result is False:
                        self.log.killed.set()
                        return
                    next_at[kind] = now + float(probe.get("periodSeconds", 10))
            self._stop.wait(max(0.0, min(next_at.values()) - time.monotonic()))

    def budget(self, kind: str) -> float:
        """Seconds the kubelet gives a probe to pass: initial delay plus failureThreshold periods."""
        probe = self.container.get(f"{kind}Probe") or {}
        return (
            float(probe.get("initialDelaySeconds", 0))
            + float(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))
            + float(probe.get("timeoutSeconds", 1))
        )

    # -- the end of the pod -----------------------------------------------------------------------------------

    def exec_in(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """Run `argv` inside the running container (its namespaces, root, user and env), as `kubectl exec`."""
        uid, gid = self._user()
        env = self.env()
        enter = ["nsenter", "-t", str(self.pid()), "-U", "-m", "-n", "-p", "-u", "-i", "-r", "-w"]
        enter += ["-S", str(uid), "-G", str(gid), "env", "-i", *[f"{k}={v}" for k, v in env.items()]]
        return subprocess.run([*enter, *argv], capture_output=True, text=True, timeout=timeout)

    def terminate(self) -> tuple[int, float]:
        """preStop as declared, then SIGTERM to PID 1; (exit code, seconds), within the grace period."""
        assert self.process is not None
        grace = float(self.pod.spec.get("terminationGracePeriodSeconds", 30))
        began = time.monotonic()
        self._stop.set()
        pre_stop = self.container.get("lifecycle", {}).get("preStop")
        if pre_stop and self.process.poll() is None:
            hook = self.exec_in(pre_stop["exec"]["command"], timeout=grace)
            assert hook.returncode == 0, f"{self.pod.name}: preStop exited {hook.returncode}: {hook.stderr[-2000:]}"
        if self.process.poll() is None:
            os.kill(self.pid(), signal.SIGTERM)
        remaining = grace - (time.monotonic() - began)
        try:
            code = self.process.wait(max(remaining, 0.1))
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"{self.pod.name} still running after {grace}s:\n{self.output()}") from None
        return code, time.monotonic() - began

    def close(self) -> None:
        self._stop.set()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self._thread is not None:
            self._thread.join(10)
