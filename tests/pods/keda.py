"""KEDA without a cluster: a ScaledObject's rabbitmq trigger resolved and called as KEDA's scaler calls it.

KEDA's rabbitmq scaler (kedacore/keda pkg/scalers/rabbitmq_scaler.go) takes `host` from the trigger's
metadata, else from the TriggerAuthentication's parameters (read from Secrets); `username`/`password`
parameters replace the URL's credentials and `vhostName` replaces the vhost of the URL's path. With protocol
http it GETs `<host>[/<sub path>]/api/queues/<vhost>/<queue>` and takes `messages` (ready + unacknowledged);
with `useRegex: "true"` it GETs `/api/queues/<vhost>?page=1&use_regex=true&pagination=false&name=<regex>&page_size=100`
instead (an error when the matches fill more than one page) and sums `messages` over the matched queues
(`operation: sum`). A trigger is active when its count is above its `activationValue`, the ScaledObject when
any trigger is. KEDA then keeps the Deployment at `minReplicaCount` while inactive and at
`max(minReplicaCount, 1)` when active. Anything of a ScaledObject,
trigger or TriggerAuthentication this module does not model fails, like a pod field kube.py does not know.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx

from tests.pods import kube
from tests.pods.cluster import Cluster
from tests.pods.runner import PodRun
from tests.support.topology import other_queues, retry_queues, worker_topology

# What KEDA does with each field, as far as "does the worker get scaled at all" goes: polling, cooldown,
# fallback and the HPA behaviour only change when, so they are read by tests/chart, not here.
TIMING = True
SCALED_OBJECT: dict[str, Any] = {
    "scaleTargetRef": {"apiVersion": True, "kind": True, "name": True},
    "pollingInterval": TIMING,
    "cooldownPeriod": TIMING,
    "minReplicaCount": True,
    "maxReplicaCount": True,
    "fallback": TIMING,
    "advanced": {"restoreToOriginalReplicaCount": TIMING, "horizontalPodAutoscalerConfig": TIMING},
    "triggers": {
        "type": True,
        "name": True,
        "metricType": True,
        "authenticationRef": {"name": True, "kind": True},
        "metadata": {
            "protocol": True,
            "mode": True,
            "value": True,
            "activationValue": True,
            "queueName": True,
            "vhostName": True,
            "host": True,
            "excludeUnacknowledged": True,
            "useRegex": True,
            "operation": True,
        },
    },
}
TRIGGER_AUTHENTICATION: dict[str, Any] = {"secretTargetRef": {"parameter": True, "name": True, "key": True}}
PARAMETERS = {"host", "username", "password", "vhostName", "protocol"}  # the rabbitmq scaler's authParams we model
ROOT_VHOST_PATH = "/%2F"
PAGE_SIZE = 100  # KEDA's default pageSize (the chart leaves it)


@dataclass
class RabbitTrigger:
    """A rabbitmq trigger with its parameters resolved (metadata first, then the TriggerAuthentication)."""

    host: str
    queue: str
    vhost_name: str
    username: str
    password: str
    activation: float
    exclude_unacked: bool
    regex: bool = False  # useRegex: `queue` is a regex over the vhost's queue names (operation sum)

    def _split(self) -> tuple[str, str]:
        """(scheme://host[/sub path], /vhost) as getVhostAndPathFromURL: the vhost is the URL's last path segment
        unless vhostName says otherwise; none means the default vhost."""
        parts = urllib.parse.urlsplit(self.host)
        segments = parts.path.split("/")
        vhost_path = "/" + segments[-1]
        sub = "/".join(s for s in segments[:-1] if s)
        if self.vhost_name:
            vhost_path = "/" + urllib.parse.quote_plus(self.vhost_name)
        if vhost_path in ("", "/"):
            vhost_path = ROOT_VHOST_PATH
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{'/' + sub if sub else ''}", vhost_path

    def management_uri(self) -> str:
        """The URI KEDA's getQueueInfoViaHTTP requests (credentials travel as basic auth)."""
        base, vhost_path = self._split()
        if self.regex:
            query = f"page=1&use_regex=true&pagination=false&name={urllib.parse.quote_plus(self.queue)}"
            return f"{base}/api/queues{vhost_path}?{query}&page_size={PAGE_SIZE}"
        return f"{base}/api/queues{vhost_path}/{urllib.parse.quote_plus(self.queue)}"

    def vhost(self) -> str:
        """The vhost the URI asks for."""
        return urllib.parse.unquote_plus(self._split()[1][1:])

    def credentials(self) -> tuple[str, str]:
        """`username`/`password` parameters when both are given, else the URL's userinfo (basic auth either way)."""
        if self.username and self.password:
            return self.username, self.password
        parts = urllib.parse.urlsplit(self.host)
        return urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or "")

    def queues(self, cluster: Cluster) -> list[dict[str, Any]]:
        """The queue (or, with useRegex, every queue matched) as the management API reports it to the scaler, read
        from the broker the host names (through the cluster's DNS)."""
        uri = self.management_uri()
        parts = urllib.parse.urlsplit(uri)
        socket = cluster.broker_socket(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), timeout=10) as client:
            response = client.get(uri, auth=self.credentials())
        assert response.status_code == 200, f"KEDA's GET {uri} answered {response.status_code}: {response.text[:300]}"
        info = response.json()
        if not self.regex:
            return [info]
        assert info.get("page_count", 1) <= 1, f"KEDA: regex {self.queue} matches more queues than one page holds"
        return list(info["items"])

    def queue_length(self, cluster: Cluster) -> int:
        """The metric, as the scaler computes it (summed over the matched queues with useRegex). A count the broker
        has not collected yet is missing: 0 for Go's decoder too."""
        key = "messages_ready" if self.exclude_unacked else "messages"
        return sum(int(q.get(key, 0)) for q in self.queues(cluster))

    def wait_reading(self, cluster: Cluster, expected: int, budget: float) -> int:
        """What the trigger reads once it reads `expected`, or when `budget` seconds have passed: KEDA polls, and the
        management API refreshes its counts every 5 s (collect_statistics_interval)."""
        deadline = time.monotonic() + budget
        while (seen := self.queue_length(cluster)) != expected and time.monotonic() < deadline:
            time.sleep(0.5)  # KEDA's next poll, not a synchronisation: the counts lag the broker by design
        return seen


def scaled_objects(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """The ScaledObjects by the Deployment they scale, checked to target one that exists and leaves it `replicas`."""
    out: dict[str, dict[str, Any]] = {}
    for so in (d for d in cluster.docs if d["kind"] == "ScaledObject"):
        problems = kube.not_understood(so["spec"], SCALED_OBJECT, "ScaledObject.spec")
        assert not problems, f"fields the runner's KEDA does not model: {problems}"
        ref = so["spec"]["scaleTargetRef"]
        assert (ref.get("apiVersion", "apps/v1"), ref.get("kind", "Deployment")) == ("apps/v1", "Deployment")
        (target,) = [d for d in cluster.docs if d["kind"] == "Deployment" and d["metadata"]["name"] == ref["name"]]
        assert "replicas" not in target["spec"], f"{ref['name']} sets replicas, which KEDA's HPA owns"
        out[ref["name"]] = so
    return out


def _auth_params(cluster: Cluster, trigger: dict[str, Any]) -> dict[str, str]:
    ref = trigger.get("authenticationRef")
    if not ref:
        return {}
    assert ref.get("kind", "TriggerAuthentication") == "TriggerAuthentication", f"{ref['kind']} is not modelled"
    found = [d for d in cluster.docs if d["kind"] == "TriggerAuthentication" and d["metadata"]["name"] == ref["name"]]
    assert found, f"trigger {trigger.get('name')}: TriggerAuthentication {ref['name']} is not rendered"
    problems = kube.not_understood(found[0]["spec"], TRIGGER_AUTHENTICATION, "TriggerAuthentication.spec")
    assert not problems, f"fields the runner's KEDA does not model: {problems}"
    params: dict[str, str] = {}
    for item in found[0]["spec"]["secretTargetRef"]:
        assert item["parameter"] in PARAMETERS, f"TriggerAuthentication parameter {item['parameter']} is not modelled"
        data = cluster.objects.get(("Secret", item["name"]))
        assert data is not None, f"KEDA reads Secret {item['name']}, which does not exist"
        assert item["key"] in data, f"KEDA reads key {item['key']} of Secret {item['name']}, which it does not hold"
        params[item["parameter"]] = data[item["key"]].decode()
    return params


def rabbit_triggers(cluster: Cluster, so: dict[str, Any], target: PodRun) -> list[RabbitTrigger]:
    """The rabbitmq triggers of `so`, resolved; a cpu trigger is checked against the target's cpu request."""
    out: list[RabbitTrigger] = []
    for trigger in so["spec"]["triggers"]:
        if trigger["type"] == "cpu":
            requests = target.container.get("resources", {}).get("requests", {})
            assert "cpu" in requests, "KEDA's cpu trigger needs the container's cpu request"
            continue
        assert trigger["type"] == "rabbitmq", f"trigger type {trigger['type']} is not modelled"
        meta, params = trigger["metadata"], _auth_params(cluster, trigger)
        host = meta.get("host") or params.get("host", "")
        protocol = meta.get("protocol") or params.get("protocol") or "auto"
        if protocol == "auto":
            protocol = {"http": "http", "https": "http", "amqp": "amqp", "amqps": "amqp"}.get(
                urllib.parse.urlsplit(host).scheme, "?"
            )
        assert protocol == "http", f"protocol {protocol}: only KEDA's http protocol (management API) is modelled"
        assert meta.get("mode", "QueueLength") == "QueueLength", f"mode {meta['mode']} is not modelled"
        assert bool(params.get("username")) == bool(params.get("password")), "username and password go together"
        regex = meta.get("useRegex", "false") == "true"
        assert meta.get("operation", "sum") == "sum", f"operation {meta['operation']} is not modelled"
        out.append(
            RabbitTrigger(
                host=host,
                queue=meta["queueName"],
                vhost_name=meta.get("vhostName") or params.get("vhostName", ""),
                username=params.get("username", ""),
                password=params.get("password", ""),
                activation=float(meta.get("activationValue", "0")),
                exclude_unacked=meta.get("excludeUnacknowledged", "false") == "true",
                regex=regex,
            )
        )
    return out


def _canonical(host: str) -> str:
    return host.removesuffix(".cluster.local")


def worker_url(target: PodRun) -> urllib.parse.SplitResult:
    """The broker URL the target's process reads from its own url file."""
    return urllib.parse.urlsplit(target.file(target.env()["CPW_RABBITMQ_URL_FILE"]).decode().strip())


def check_consumed_by(trigger: RabbitTrigger, target: PodRun) -> None:
    """KEDA watches the queue, vhost and broker the target's process consumes (read from its own url file); a
    useRegex trigger, exactly the delay queues its worker moves retries from (broker/retries.py)."""
    env = target.env()
    url = worker_url(target)
    vhost = urllib.parse.unquote(url.path[1:]) or "/"
    if trigger.regex:
        topology = worker_topology(env)
        retries, others = set(retry_queues(topology)), set(other_queues(topology))
        pattern = re.compile(trigger.queue)  # RabbitMQ matches anywhere in the name, as re.search
        matched = {q for q in retries | others if pattern.search(q)}
        assert matched == retries, (
            f"KEDA's {trigger.queue} matches {sorted(matched)}, the worker moves retries from {sorted(retries)}"
        )
    else:
        assert trigger.queue == env["CPW_JOBS_QUEUE"], (
            f"KEDA watches {trigger.queue}, the worker consumes {env['CPW_JOBS_QUEUE']}"
        )
    assert trigger.vhost() == vhost, f"KEDA watches vhost {trigger.vhost()!r}, the worker consumes in {vhost!r}"
    keda_host = urllib.parse.urlsplit(trigger.host).hostname or ""
    assert _canonical(keda_host) == _canonical(url.hostname or ""), f"KEDA asks {keda_host}, the worker {url.hostname}"


def is_active(triggers: list[RabbitTrigger], cluster: Cluster) -> bool:
    """KEDA's activation of the ScaledObject: any trigger whose count is above its activationValue."""
    return any(t.queue_length(cluster) > t.activation for t in triggers)


def replicas(so: dict[str, Any], active: bool) -> int:
    """What KEDA sets the Deployment to: minReplicaCount while inactive, at least 1 while active."""
    minimum = int(so["spec"].get("minReplicaCount", 0))
    return max(minimum, 1) if active else minimum
