"""A value set's pods on one machine: one replica per Deployment plus the helm test Pod, wired as a cluster.

Service names resolve (via each pod's /etc/hosts) to an address of their own on the pod's loopback, where the
pod's relay forwards to the pod the Service selects, on the port its `targetPort` names. What runs outside the
pods is reached the same way under the names the value set gives it (`Outside`): the broker under the host of
every broker URL in the Secrets (the test's, the chart's, the operator's), PostgreSQL under the host of the
DSN in the Secrets, the OTLP collector under the endpoint the pods export to. Each Service gets its own
127.0.1.x address, not 127.0.0.1, because two Services share port 8001 and a pod listens on its own ports at
127.0.0.1.
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
POSTGRES_HOST = f"postgresql.{NAMESPACE}.svc"
# Where each service outside the pods resolves to in a pod (the relay listens there, on the ports dialled).
BROKER_ADDRESS = "127.0.2.1"
POSTGRES_ADDRESS = "127.0.2.2"
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


_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "http": 80, "https": 443, "postgresql": 5432, "postgres": 5432}
BROKER_SCHEMES = ("amqp", "amqps", "http", "https")
POSTGRES_SCHEMES = ("postgresql", "postgres")


def secret_hosts(
    objects: dict[tuple[str, str], dict[str, bytes]], schemes: tuple[str, ...], ports: set[int]
) -> set[str]:
    """Host names of the URLs in the Secrets with one of `schemes`, on one of `ports`: what DNS must resolve."""
    hosts: set[str] = set()
    for (kind, _), data in objects.items():
        for raw in data.values() if kind == "Secret" else ():
            try:
                parts = urllib.parse.urlsplit(raw.decode().strip())
                port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
            except (UnicodeDecodeError, ValueError):
                continue
            if parts.scheme in schemes and parts.hostname and port in ports:
                hosts.add(parts.hostname)
    return hosts


def broker_hosts(objects: dict[tuple[str, str], dict[str, bytes]], ports: dict[int, int]) -> set[str]:
    """Host names of the broker URLs (amqp or management, on a broker port) in the Secrets."""
    return secret_hosts(objects, BROKER_SCHEMES, set(ports))


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
class Outside:
    """A service outside the pods, under the names the value set gives it: in every pod they resolve to `address`,
    where the pod's relay forwards each port dialled to a Unix socket on the host. Behind that socket the host
    relay connects to a TCP port of the test's own server (`upstream`), or a test double serves it (the OTLP sink)."""

    names: set[str]
    address: str
    sockets: dict[int, Path]  # port the pods dial -> the Unix socket behind it
    upstream: dict[int, int] = field(default_factory=dict)  # port the pods dial -> the test's server on 127.0.0.1

    def socket(self, host: str, port: int) -> Path:
        """Where a connection to `host`:`port` lands, if `host` is one of this service's names."""
        assert host in self.names, f"{host} is none of its names {sorted(self.names)}"
        assert port in self.sockets, f"{host}:{port}: it listens on {sorted(self.sockets)}"
        return self.sockets[port]


@dataclass
class Cluster:
    """The runnable pods of rendered `docs`, given the objects (Secrets, ConfigMaps) that exist beforehand."""

    docs: list[dict[str, Any]]
    objects: dict[tuple[str, str], dict[str, bytes]]
    venv: Path
    workdir: Path
    broker_ports: dict[int, int]  # port in the broker URL -> port of the test's RabbitMQ on 127.0.0.1
    postgres_port: int | None = None  # the test's PostgreSQL on 127.0.0.1, for a DSN in the Secrets (port 5432)
    runs: dict[str, PodRun] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)  # pod name -> the Deployment (or Pod) it comes from
    otlp: OtlpSink | None = None
    _relay: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        for doc in self.docs:
            if doc["kind"] in ("Secret", "ConfigMap"):
                self.objects[(doc["kind"], doc["metadata"]["name"])] = kube.from_manifest(doc)
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
        self.outside = self._outside()

    def _outside(self) -> dict[str, Outside]:
        """The services outside the pods this value set names, by what they are."""
        net = self.workdir / "net"
        found = {
            "broker": Outside(
                broker_hosts(self.objects, self.broker_ports),
                BROKER_ADDRESS,
                {port: net / f"broker-{port}.sock" for port in self.broker_ports},
                dict(self.broker_ports),
            )
        }
        postgres = secret_hosts(self.objects, POSTGRES_SCHEMES, {5432})
        if postgres:
            assert self.postgres_port is not None, f"the Secrets name PostgreSQL at {sorted(postgres)}: none given"
            found["postgresql"] = Outside(
                postgres, POSTGRES_ADDRESS, {5432: net / "postgresql-5432.sock"}, {5432: self.postgres_port}
            )
        otlp = otlp_endpoints(self._pods)
        if otlp:
            sink = net / "otlp.sock"  # one sink behind every endpoint: tests/pods/otlp.py
            found["otlp"] = Outside({host for host, _ in otlp}, OTLP_ADDRESS, {port: sink for _, port in otlp})
        return found

    def problems(self) -> list[str]:
        """Fields of any pod spec the runner does not model."""
        return [f"{pod.name}: {path}" for _, pod in self._pods for path in kube.not_understood(pod.spec)]

    def hosts(self) -> str:
        lines = ["127.0.0.1 localhost"]
        lines += [f"{o.address} {' '.join(sorted(o.names))}" for o in self.outside.values() if o.names]
        lines += [f"{address} {_aliases(name)}" for name, address in self.addresses.items()]
        return "\n".join(lines) + "\n"

    def selected(self, service: dict[str, Any]) -> PodRun | None:
        selector = service["spec"].get("selector") or {}
        for run in self.runs.values():
            if selector and all(run.pod.labels.get(k) == v for k, v in selector.items()):
                return run
        return None

    def broker_socket(self, host: str, port: int) -> Path:
        """Where a connection to `host`:`port` from outside the pods lands (KEDA's), if the host is the broker's."""
        return self.outside["broker"].socket(host, port)

    def service_socket(self, name: str, port: int) -> Path:
        """Where a connection to Service `name`:`port` lands: the selected pod's socket for the targetPort."""
        service = next(s for s in self.services if s["metadata"]["name"] == name)
        spec_port = next(p for p in service["spec"]["ports"] if int(p["port"]) == port)
        run = self.selected(service)
        assert run is not None, f"Service {name} selects no pod"
        return run.socket(kube.named_port(run.container, spec_port.get("targetPort", port)))

    def build(self) -> Cluster:
        """PodRuns for every pod (not started), then each pod's outbound routes to every Service and outside."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        netdir = self.workdir / "net"
        netdir.mkdir(exist_ok=True)
        if "otlp" in self.outside:
            (sink,) = set(self.outside["otlp"].sockets.values())
            self.otlp = OtlpSink(sink)
        for kind, pod in self._pods:
            container = pod.spec["containers"][0]
            component = image_of(container)
            entry, cmd = entrypoint_cmd(component)
            run = PodRun(pod, image_env(component, self.venv), entry, cmd, self.venv,
                         self.workdir / pod.name, self.hosts(), [], netdir)  # fmt: skip
            run.workdir.mkdir(parents=True, exist_ok=True)
            self.runs[pod.name], self.kinds[pod.name] = run, kind
        outside = [(o.address, port, str(path)) for o in self.outside.values() for port, path in o.sockets.items()]
        for run in self.runs.values():
            own = set(run.ports())
            routes = list(outside)
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
        config = self.workdir / "outside-relay.json"
        inbound = [[str(o.sockets[p]), local] for o in self.outside.values() for p, local in o.upstream.items()]
        config.write_text(json.dumps({"inbound": inbound}))
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
