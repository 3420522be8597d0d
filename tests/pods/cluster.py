"""A value set's pods on one machine: one replica per Deployment plus the helm test Pod, wired as a cluster.

Service names resolve (via each pod's /etc/hosts) to an address of their own on the pod's loopback, where the
pod's relay forwards to the pod the Service selects, on the port its `targetPort` names; the broker's names
(the host of every broker URL in the value set's Secrets: the test's, the chart's, the operator's) likewise
reach the test's RabbitMQ through a relay on the host. Each Service gets its own 127.0.1.x address,
not 127.0.0.1, because two Services share port 8001 and a pod listens on its own ports at 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chart.chartlib import NAMESPACE
from tests.images.dockerfile import DOCKERFILES, parse
from tests.images.runtime import image_env
from tests.pods import kube
from tests.pods.otlp import OtlpSink
from tests.pods.runner import RELAY, PodRun

BROKER_HOST = f"rabbitmq.{NAMESPACE}.svc"
BROKER_ADDRESS = "127.0.2.1"
OTLP_ADDRESS = "127.0.3.1"  # the OTLP collector the values name: tests/pods/otlp.py
# The image a container names -> the Dockerfile that builds it.
IMAGES = {"api-adapter": "api", "worker": "worker"}


def image_of(container: dict[str, Any]) -> str:
    name = container["image"].split("@", 1)[0].rsplit("/", 1)[-1]  # registry/path/name[:tag][@digest]
    repository = name.split(":", 1)[0]
    assert repository in IMAGES, f"{container['image']}: no Dockerfile in this repository builds it"
    return IMAGES[repository]


def entrypoint_cmd(component: str) -> tuple[list[str], list[str]]:
    """The runtime stage's ENTRYPOINT and CMD (exec form), what runs when the manifest sets no command."""
    stage = parse(DOCKERFILES[component]).stage("runtime")
    forms = []
    for keyword in ("ENTRYPOINT", "CMD"):
        instruction = stage.last(keyword)
        form = instruction.exec_form if instruction else []
        assert form is not None, f"{keyword} of {component} is in shell form"
        forms.append(form)
    return forms[0], forms[1]


def broker_hosts(objects: dict[tuple[str, str], dict[str, bytes]], ports: dict[int, int]) -> set[str]:
    """Host names of the broker URLs (amqp or management, on a broker port) in the Secrets: what DNS must resolve."""
    hosts: set[str] = set()
    for (kind, _), data in objects.items():
        for raw in data.values() if kind == "Secret" else ():
            try:
                parts = urllib.parse.urlsplit(raw.decode().strip())
                port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
            except (UnicodeDecodeError, ValueError):
                continue
            if parts.scheme in _DEFAULT_PORTS and parts.hostname and port in ports:
                hosts.add(parts.hostname)
    return hosts


_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "http": 80, "https": 443}


def otlp_endpoints(pods: list[tuple[str, kube.Pod]]) -> set[tuple[str, int]]:
    """(host, port) of the OTLP endpoints the pods export to (OTEL_EXPORTER_OTLP_ENDPOINT as rendered)."""
    out: set[tuple[str, int]] = set()
    for _, pod in pods:
        for item in pod.spec["containers"][0].get("env", []):
            if item["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT" and "value" in item:
                parts = urllib.parse.urlsplit(item["value"])
                out.add((parts.hostname or "", parts.port or _DEFAULT_PORTS.get(parts.scheme, 4317)))
    return out


def _aliases(name: str) -> str:
    return f"{name} {name}.{NAMESPACE} {name}.{NAMESPACE}.svc {name}.{NAMESPACE}.svc.cluster.local"


@dataclass
class Cluster:
    """The runnable pods of rendered `docs`, given the objects (Secrets, ConfigMaps) that exist beforehand."""

    docs: list[dict[str, Any]]
    objects: dict[tuple[str, str], dict[str, bytes]]
    venv: Path
    workdir: Path
    broker_ports: dict[int, int]  # port in the broker URL -> port of the test's RabbitMQ on 127.0.0.1
    runs: dict[str, PodRun] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)  # pod name -> the Deployment (or Pod) it comes from
    otlp: OtlpSink | None = None
    _relay: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        for doc in self.docs:
            if doc["kind"] in ("Secret", "ConfigMap"):
                self.objects[(doc["kind"], doc["metadata"]["name"])] = kube.from_manifest(doc)
        self.broker_hosts = broker_hosts(self.objects, self.broker_ports)
        self.broker_sockets = {port: self.workdir / "net" / f"broker-{port}.sock" for port in self.broker_ports}
        self.services = [d for d in self.docs if d["kind"] == "Service"]
        self.addresses = {s["metadata"]["name"]: f"127.0.1.{i + 1}" for i, s in enumerate(self.services)}
        pods: list[tuple[str, kube.Pod]] = []
        for doc in self.docs:
            if doc["kind"] in ("StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet"):
                raise AssertionError(f"{doc['kind']} {doc['metadata']['name']}: the runner does not model it")
            if doc["kind"] == "Deployment":
                template = doc["spec"]["template"]
                meta, name = template.get("metadata", {}), f"{doc['metadata']['name']}-5d8f9c7b6-pods1"
            elif doc["kind"] == "Pod":
                template, meta, name = doc, doc["metadata"], doc["metadata"]["name"]
            else:
                continue
            pod = kube.Pod(name, NAMESPACE, meta.get("labels", {}), meta.get("annotations", {}), template["spec"])
            pod.objects = self.objects
            pods.append((doc["kind"], pod))
            self.owners[name] = doc["metadata"]["name"]
        self._pods = pods
        self.otlp_endpoints = otlp_endpoints(pods)

    def problems(self) -> list[str]:
        """Fields of any pod spec the runner does not model."""
        return [f"{pod.name}: {path}" for _, pod in self._pods for path in kube.not_understood(pod.spec)]

    def hosts(self) -> str:
        lines = ["127.0.0.1 localhost", f"{BROKER_ADDRESS} {' '.join(sorted(self.broker_hosts))}"]
        lines += [f"{address} {_aliases(name)}" for name, address in self.addresses.items()]
        if self.otlp_endpoints:
            lines.append(f"{OTLP_ADDRESS} {' '.join(sorted({host for host, _ in self.otlp_endpoints}))}")
        return "\n".join(lines) + "\n"

    def selected(self, service: dict[str, Any]) -> PodRun | None:
        selector = service["spec"].get("selector") or {}
        for run in self.runs.values():
            if selector and all(run.pod.labels.get(k) == v for k, v in selector.items()):
                return run
        return None

    def broker_socket(self, host: str, port: int) -> Path:
        """Where a connection to `host`:`port` from outside the pods lands (KEDA's), if the host is the broker's."""
        assert host in self.broker_hosts, f"{host} is none of the broker's names {sorted(self.broker_hosts)}"
        assert port in self.broker_sockets, f"{host}:{port}: the broker listens on {sorted(self.broker_sockets)}"
        return self.broker_sockets[port]

    def service_socket(self, name: str, port: int) -> Path:
        """Where a connection to Service `name`:`port` lands: the selected pod's socket for the targetPort."""
        service = next(s for s in self.services if s["metadata"]["name"] == name)
        spec_port = next(p for p in service["spec"]["ports"] if int(p["port"]) == port)
        run = self.selected(service)
        assert run is not None, f"Service {name} selects no pod"
        return run.socket(kube.named_port(run.container, spec_port.get("targetPort", port)))

    def build(self) -> Cluster:
        """PodRuns for every pod (not started), then each pod's outbound routes to every Service."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        netdir = self.workdir / "net"
        netdir.mkdir(exist_ok=True)
        broker_sockets = self.broker_sockets
        if self.otlp_endpoints:
            self.otlp = OtlpSink(netdir / "otlp.sock")
        for kind, pod in self._pods:
            container = pod.spec["containers"][0]
            component = image_of(container)
            entry, cmd = entrypoint_cmd(component)
            run = PodRun(pod, image_env(component, self.venv), entry, cmd, self.venv,
                         self.workdir / pod.name, self.hosts(), [], netdir)  # fmt: skip
            run.workdir.mkdir(parents=True, exist_ok=True)
            self.runs[pod.name], self.kinds[pod.name] = run, kind
        for run in self.runs.values():
            own = set(run.ports())
            routes = [(BROKER_ADDRESS, port, str(path)) for port, path in broker_sockets.items()]
            if self.otlp is not None:
                routes += [(OTLP_ADDRESS, port, str(self.otlp.path)) for port in {p for _, p in self.otlp_endpoints}]
            for service in self.services:
                selected = self.selected(service)
                if selected is None:
                    continue
                for spec_port in service["spec"]["ports"]:
                    if int(spec_port["port"]) in own:
                        continue  # the pod listens on 0.0.0.0 there itself: no route, no clash
                    target = selected.socket(kube.named_port(selected.container, spec_port.get("targetPort")))
                    routes.append((self.addresses[service["metadata"]["name"]], int(spec_port["port"]), str(target)))
            run.outbound = routes
        config = self.workdir / "broker-relay.json"
        config.write_text(
            json.dumps({"inbound": [[str(broker_sockets[p]), self.broker_ports[p]] for p in broker_sockets]})
        )
        self._relay = subprocess.Popen(
            [sys.executable, str(RELAY), str(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._relay.stdout is not None and self._relay.stdout.readline().strip() == "ready"
        return self

    def of_kind(self, kind: str) -> list[PodRun]:
        return [run for name, run in self.runs.items() if self.kinds[name] == kind]

    def close(self) -> None:
        for run in self.runs.values():
            run.close()
        if self.otlp is not None:
            self.otlp.close()
        if self._relay is not None:
            self._relay.kill()
            self._relay.wait(10)
            for pipe in (self._relay.stdin, self._relay.stdout):
                if pipe is not None:
                    pipe.close()


def broker_url(amqp_url: str, vhost: str) -> str:
    """The test broker's URL as a pod would be given it: the broker's Service name, the AMQP port 5672."""
    parts = urllib.parse.urlsplit(amqp_url)
    return f"amqp://{parts.username}:{parts.password}@{BROKER_HOST}:5672/{urllib.parse.quote(vhost, safe='')}"
