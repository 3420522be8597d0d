"""Cross-object invariants on every value set: selectors match pod labels, probes and Services hit declared
ports, NetworkPolicies admit the scrapers', the API clients' and the workers' broker traffic (and little else),
the ScaledObject targets the worker Deployment, the queue the workers consume and (activation only) their retry
delay queues, PDBs never block drains,
terminationGracePeriodSeconds exceeds the drain timeout."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pytest

from tests.chart.chartlib import (
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    env_of,
    find,
    labels_match,
    one,
    pod_specs,
    render_set,
)
from tests.support.topology import other_queues, retry_queues, worker_topology

pytestmark = pytest.mark.timeout(60)

ALL = sorted(VALUE_SETS)


def deployments(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}


def container_ports(pod_spec: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in pod_spec["containers"] for p in c.get("ports", [])}


@pytest.mark.parametrize("value_set", ALL)
def test_selectors_match_pod_labels(value_set: str) -> None:
    docs = render_set(value_set)
    deps = deployments(docs)
    for dep in deps.values():
        assert labels_match(dep["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    # every Service selects exactly one Deployment's pods, and its targetPorts are ports those pods declare
    for svc in find(docs, "Service"):
        selected = [
            d
            for d in deps.values()
            if labels_match({"matchLabels": svc["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, (
            f"Service {svc['metadata']['name']} selects {[d['metadata']['name'] for d in selected]}"
        )
        ports = container_ports(selected[0]["spec"]["template"]["spec"])
        for p in svc["spec"]["ports"]:
            tp = p["targetPort"]
            assert (tp in ports) if isinstance(tp, str) else (tp in ports.values()), f"{svc['metadata']['name']}: {tp}"
    # PDBs select their Deployment's pods
    for pdb in find(docs, "PodDisruptionBudget"):
        dep = deps[pdb["metadata"]["name"]]
        assert labels_match(pdb["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("value_set", ALL)
def test_probes_hit_declared_ports(value_set: str) -> None:
    for obj, _meta, spec in pod_specs(render_set(value_set)):
        ports = container_ports(spec)
        for c in spec["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in c:
                    port = c[probe]["httpGet"]["port"]
                    assert port in ports if isinstance(port, str) else port in ports.values(), (
                        f"{obj['metadata']['name']} {probe} -> {port}, declared {ports}"
                    )


def _min_replicas(docs: list[dict], dep: dict) -> int:
    name = dep["metadata"]["name"]
    for so in find(docs, "ScaledObject"):
        if so["spec"]["scaleTargetRef"]["name"] == name:
            return so["spec"]["minReplicaCount"]
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            return hpa["spec"]["minReplicas"]
    return dep["spec"]["replicas"]


@pytest.mark.parametrize("value_set", ALL)
def test_pdb_never_blocks_a_drain(value_set: str) -> None:
    docs = render_set(value_set)
    deps = deployments(docs)
    for pdb in find(docs, "PodDisruptionBudget"):
        dep = deps[pdb["metadata"]["name"]]
        least = _min_replicas(docs, dep)
        if "minAvailable" in pdb["spec"]:
            assert isinstance(pdb["spec"]["minAvailable"], int)
            assert pdb["spec"]["minAvailable"] < least, f"{pdb['metadata']['name']}: minAvailable >= {least}"
        else:
            assert pdb["spec"]["maxUnavailable"] not in (0, "0%")


@pytest.mark.parametrize("value_set", [s for s in ALL if s != "api-only"])
def test_worker_grace_period_exceeds_drain_timeout(value_set: str) -> None:
    dep = deployments(render_set(value_set))[f"{RELEASE}-worker"]
    spec = dep["spec"]["template"]["spec"]
    drain = float(env_of(spec["containers"][0])["CPW_DRAIN_TIMEOUT"])
    assert spec["terminationGracePeriodSeconds"] > drain


def test_grace_period_is_derived_from_drain_timeout() -> None:
    from tests.chart.chartlib import render_values

    spec = one(
        render_values({"workers": {"drainTimeout": 122.5, "terminationGraceMarginSeconds": 10}}),
        "Deployment",
        f"{RELEASE}-worker",
    )["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 133


@pytest.mark.parametrize("value_set", ALL)
def test_api_grace_period_outlasts_the_prestop_sleep_and_the_longest_long_poll(value_set: str) -> None:
    # Issue 17, item 9: 30 s of grace against CPW_API_MAX_WAIT 60 s and no preStop delay: rollouts cut long-polls.
    api = deployments(render_set(value_set)).get(f"{RELEASE}-api")
    if api is None:
        pytest.skip("no API in this value set")
    spec = api["spec"]["template"]["spec"]
    container = spec["containers"][0]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"] and command[2].startswith("import time; time.sleep(")
    sleep = int(command[2].removeprefix("import time; time.sleep(").removesuffix(")"))
    env = env_of(container)
    max_wait = float(env["CPW_API_MAX_WAIT"])
    # After the last long-poll, the shutdown flushes Accepted records and closes the broker within one
    # CPW_PUBLISH_TIMEOUT (the broker may be gone), and the process still has to exit.
    close = float(env.get("CPW_PUBLISH_TIMEOUT", 10))
    assert sleep >= 1
    assert spec["terminationGracePeriodSeconds"] > sleep + max_wait + close


def test_api_grace_period_is_derived_from_max_wait() -> None:
    from tests.chart.chartlib import render_values

    values = {"api": {"maxWait": 120, "preStopSleepSeconds": 3, "terminationGraceMarginSeconds": 7}}
    spec = one(render_values(values), "Deployment", f"{RELEASE}-api")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 130
    assert env_of(spec["containers"][0])["CPW_API_MAX_WAIT"] == "120"
    off = one(render_values({"api": {"preStopSleepSeconds": 0}}), "Deployment", f"{RELEASE}-api")
    assert "lifecycle" not in off["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("value_set", [s for s in ALL if any(d["kind"] == "ScaledObject" for d in render_set(s))])
def test_scaledobject_targets_the_workers_and_their_queue(value_set: str) -> None:
    docs = render_set(value_set)
    so = one(docs, "ScaledObject")
    dep = one(docs, "Deployment", f"{RELEASE}-worker")
    ref = so["spec"]["scaleTargetRef"]
    assert (ref.get("apiVersion", "apps/v1"), ref.get("kind", "Deployment"), ref["name"]) == (
        "apps/v1",
        "Deployment",
        dep["metadata"]["name"],
    )
    assert "replicas" not in dep["spec"], "with KEDA the Deployment must not fight the HPA over replicas"
    worker_env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    rabbit = [t for t in so["spec"]["triggers"] if t["type"] == "rabbitmq"]
    jobs, retries = _jobs_and_retry_triggers(rabbit)
    assert retries is not None, "the fleet at zero would never wake for a waiting retry"
    meta = jobs["metadata"]
    assert all(isinstance(v, str) for t in so["spec"]["triggers"] for v in t["metadata"].values()), (
        "metadata are strings"
    )
    assert meta["queueName"] == worker_env["CPW_JOBS_QUEUE"]
    _check_retry_trigger(jobs, retries, worker_env)
    api = deployments(docs).get(f"{RELEASE}-api")
    if api:
        assert env_of(api["spec"]["template"]["spec"]["containers"][0])["CPW_JOBS_QUEUE"] == meta["queueName"]
    assert meta["protocol"] == "http" and meta["mode"] == "QueueLength"
    assert int(meta["value"]) >= 1
    assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    # the TriggerAuthentication exists and reads the broker Secret the workers mount
    ta = one(docs, "TriggerAuthentication", jobs["authenticationRef"]["name"])
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "rabbitmq")
    mounted = {s["secret"]["name"] for s in vol["projected"]["sources"]}
    assert {r["name"] for r in ta["spec"]["secretTargetRef"]} <= mounted
    if "host" not in meta:
        host_ref = next(r for r in ta["spec"]["secretTargetRef"] if r["parameter"] == "host")
        mgmt = [i for s in vol["projected"]["sources"] for i in s["secret"]["items"] if i["path"] == "management-url"]
        assert mgmt and mgmt[0]["key"] == host_ref["key"], "KEDA and the workers read the same management URL"


def _jobs_and_retry_triggers(rabbit: list[dict]) -> tuple[dict, dict | None]:
    """The jobs queue's trigger (a queue name) and the delay queues' one (a regex), and no other rabbitmq trigger."""
    jobs = [t for t in rabbit if t["metadata"].get("useRegex", "false") != "true"]
    retries = [t for t in rabbit if t["metadata"].get("useRegex") == "true"]
    assert len(jobs) == 1 and len(retries) <= 1 and len(rabbit) == len(jobs) + len(retries), rabbit
    return jobs[0], (retries[0] if retries else None)


def _check_retry_trigger(jobs: dict, retries: dict, worker_env: dict) -> None:
    """Activation only, on exactly the delay queues the worker moves retries from, over the jobs trigger's broker."""
    meta = retries["metadata"]
    assert (meta["protocol"], meta["mode"], meta["useRegex"], meta["operation"]) == (
        "http",
        "QueueLength",
        "true",
        "sum",
    )
    # any waiting retry activates, ready or held unacked by a worker (KEDA: active when messages > activationValue)
    assert float(meta["activationValue"]) == 0 and meta.get("excludeUnacknowledged", "false") == "false"
    # desired = ceil(retries / value) is 1 for up to a billion retries: never more than the HPA's own minimum of 1
    assert float(meta["value"]) >= 1e9
    # the same broker, vhost and credentials as the jobs trigger
    assert retries["authenticationRef"] == jobs["authenticationRef"]
    assert {k: meta.get(k) for k in ("vhostName", "host")} == {
        k: jobs["metadata"].get(k) for k in ("vhostName", "host")
    }
    topology = worker_topology(worker_env)
    regex = re.compile(meta["queueName"])  # RabbitMQ matches the name anywhere: the regex anchors itself
    expected = retry_queues(topology)
    assert expected and all(regex.search(q) for q in expected), (meta["queueName"], expected)
    others = [
        *other_queues(topology),
        topology.retry_queue(1),
        topology.retry_queue(topology.max_attempts + 1),
        topology.retry_queue(20),
        *(q + s for q in expected for s in ("0", ".x", "x")),
        *("x" + q for q in expected),
        topology.retry_queue(2).replace(".", "x"),
    ]
    assert not [q for q in others if q not in expected and regex.search(q)], meta["queueName"]


@pytest.mark.parametrize(
    ("jobs_queue", "max_attempts"), [("provider.jobs", 5), ("team-a.jobs", 2), ("a+b.(jobs)[1]^$", 12), ("q", 100)]
)
def test_the_retry_trigger_matches_exactly_the_delay_queues(jobs_queue: str, max_attempts: int) -> None:
    """Any jobs queue name (regex characters quoted) and any maxAttempts: the worker's retry queues, nothing else."""
    from tests.chart.chartlib import render_values

    values = {
        "global": {"rabbitmq": {"existingSecret": "s"}, "broker": {"jobsQueue": jobs_queue}},
        "workers": {"autoscaling": {"enabled": True, "minReplicas": 0}, "maxAttempts": max_attempts},
    }
    docs = render_values(values)
    env = env_of(one(docs, "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]["containers"][0])
    jobs, retries = _jobs_and_retry_triggers(one(docs, "ScaledObject")["spec"]["triggers"])
    assert retries is not None and jobs["metadata"]["queueName"] == jobs_queue
    _check_retry_trigger(jobs, retries, env)
    assert len(worker_topology(env).retry_attempts) == max_attempts - 1


def test_no_retry_trigger_without_retries() -> None:
    """maxAttempts 1: a failed job is dead-lettered at once, no delay queue exists, so none is watched."""
    from tests.chart.chartlib import render_values

    values = {
        "global": {"rabbitmq": {"existingSecret": "s"}},
        "workers": {"autoscaling": {"enabled": True}, "maxAttempts": 1},
    }
    jobs, retries = _jobs_and_retry_triggers(one(render_values(values), "ScaledObject")["spec"]["triggers"])
    assert retries is None and jobs["metadata"]["queueName"] == "provider.jobs"


def test_keda_value_defaults_to_max_concurrent_jobs() -> None:
    from tests.chart.chartlib import render_values

    base = {"global": {"rabbitmq": {"existingSecret": "s"}}, "workers": {"autoscaling": {"enabled": True}}}
    so = one(
        render_values(base | {"workers": {"autoscaling": {"enabled": True}, "maxConcurrentJobs": 7}}), "ScaledObject"
    )
    assert so["spec"]["triggers"][0]["metadata"]["value"] == "7"
    so = one(render_values(base | {"workers": {"autoscaling": {"enabled": True, "jobsPerReplica": 3}}}), "ScaledObject")
    assert so["spec"]["triggers"][0]["metadata"]["value"] == "3"
    assert so["spec"]["fallback"]["replicas"] == 10


# --- NetworkPolicy evaluation -------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """A pod (labels in a namespace) or an address outside the cluster."""

    pod_labels: dict = field(default_factory=dict)
    namespace: str = NAMESPACE
    ip: str | None = None
    ports: dict = field(default_factory=dict)  # name -> number, for named ports

    @property
    def ns_labels(self) -> dict:
        return {"kubernetes.io/metadata.name": self.namespace}


def _peer_matches(peer: dict, ep: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        if ep.ip is None:
            return False
        net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        ip = ipaddress.ip_address(ep.ip)
        return ip in net and not any(ip in ipaddress.ip_network(x) for x in peer["ipBlock"].get("except", []))
    if ep.ip is not None:
        return False
    if "namespaceSelector" in peer:
        if not labels_match(peer["namespaceSelector"], ep.ns_labels):
            return False
    elif ep.namespace != policy_ns:
        return False
    return "podSelector" not in peer or labels_match(peer["podSelector"], ep.pod_labels)


def _port_matches(rule_ports: list | None, port: int, proto: str, dest: Endpoint) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != proto:
            continue
        if "port" not in p:
            return True
        rp = p["port"]
        number = dest.ports.get(rp) if isinstance(rp, str) else rp
        if number is not None and (number == port or (p.get("endPort") and number <= port <= p["endPort"])):
            return True
    return False


def allowed(policies: list[dict], src: Endpoint, dst: Endpoint, port: int, proto: str = "TCP") -> bool:
    """Would traffic src -> dst:port pass both src's egress and dst's ingress policies?"""

    def direction_ok(direction: str, subject: Endpoint, other: Endpoint) -> bool:
        if subject.ip is not None:
            return True  # outside the cluster: no policy applies
        selecting = [
            p
            for p in policies
            if p["metadata"]["namespace"] == subject.namespace
            and labels_match(p["spec"]["podSelector"], subject.pod_labels)
            and direction.capitalize() in p["spec"].get("policyTypes", ["Ingress"])
        ]
        if not selecting:
            return True
        key, peers_key = ("ingress", "from") if direction == "ingress" else ("egress", "to")
        for p in selecting:
            for rule in p["spec"].get(key, []) or []:
                peers = rule.get(peers_key)
                if peers and not any(_peer_matches(peer, other, p["metadata"]["namespace"]) for peer in peers):
                    continue
                if _port_matches(rule.get("ports"), port, proto, dst):
                    return True
        return False

    return direction_ok("egress", src, dst) and direction_ok("ingress", dst, src)


def _pod(docs: list[dict], component: str) -> Endpoint | None:
    for obj, meta, spec in pod_specs(docs):
        if meta.get("labels", {}).get("app.kubernetes.io/component") == component:
            return Endpoint(pod_labels=meta["labels"], ports=container_ports(spec))
    return None


PROMETHEUS = Endpoint(pod_labels={"app.kubernetes.io/name": "prometheus"}, namespace="monitoring")
OUTSIDER = Endpoint(pod_labels={"app": "other"}, namespace="elsewhere")
NEIGHBOUR = Endpoint(pod_labels={"app": "client"})
BROKER = Endpoint(pod_labels={"app.kubernetes.io/name": "rabbitmq"}, namespace="messaging")  # external, in-cluster
COLLECTOR = Endpoint(pod_labels={"app": "otel-collector"}, namespace="monitoring")
DNS = Endpoint(pod_labels={"k8s-app": "kube-dns"}, namespace="kube-system")
INTERNET = Endpoint(ip="192.0.2.50")

NP_SETS = [s for s in ALL if any(d["kind"] == "NetworkPolicy" for d in render_set(s))]


@pytest.mark.parametrize("value_set", NP_SETS)
def test_network_policies_admit_what_the_release_needs(value_set: str) -> None:
    docs = render_set(value_set)
    pols = find(docs, "NetworkPolicy")
    worker, api, test_pod = _pod(docs, "worker"), _pod(docs, "api"), _pod(docs, "helm-test")
    cluster = bool(find(docs, "RabbitmqCluster"))
    broker = Endpoint(pod_labels={"app.kubernetes.io/name": f"{RELEASE}-rabbitmq"}) if cluster else BROKER
    for pod in filter(None, (worker, api)):
        # scrapers and probes reach the ops port; nobody else does
        ops = pod.ports["ops"]
        assert allowed(pols, PROMETHEUS, pod, ops), "the monitoring namespace must scrape the ops port"
        assert not allowed(pols, OUTSIDER, pod, ops)
        # DNS and the broker
        assert allowed(pols, pod, DNS, 53, "UDP") and allowed(pols, pod, DNS, 53, "TCP")
        assert allowed(pols, pod, broker, 5672), "broker traffic (AMQP) must pass"
        assert allowed(pols, pod, broker, 15672), "management API traffic must pass"
        # default deny: nothing else leaves the pod, and DNS and broker ports reach no address outside the
        # cluster nor a DNS server other than kube-dns (issue 17, item 9)
        assert not allowed(pols, pod, INTERNET, 8080)
        for port in (53, 5672, 5671, 15672, 443, 4318):
            assert not allowed(pols, pod, INTERNET, port), f"egress to any address on {port}"
        assert not allowed(pols, pod, NEIGHBOUR, 53, "UDP"), "DNS goes to kube-dns only"
    if worker:
        assert not allowed(pols, NEIGHBOUR, worker, 8000), "workers accept no API traffic"
    if api:
        http = api.ports["http"]
        if value_set != "production":  # production admits only the ingress controller namespace
            assert allowed(pols, NEIGHBOUR, api, http)
        else:
            ingress = Endpoint(pod_labels={"app": "ingress"}, namespace="ingress-nginx")
            assert allowed(pols, ingress, api, http) and not allowed(pols, NEIGHBOUR, api, http)
        assert not allowed(pols, OUTSIDER, api, http)
    if test_pod and api:
        assert allowed(pols, test_pod, api, api.ports["http"]), "the helm test pod must reach the API"
        assert not allowed(pols, test_pod, BROKER, 5672)
    # OTLP opened only when tracing is configured
    endpoint = next(
        (
            env_of(s["containers"][0]).get("OTEL_EXPORTER_OTLP_ENDPOINT")
            for o, m, s in pod_specs(docs)
            if o["kind"] == "Deployment"
        ),
        None,
    )
    pod = worker or api
    if endpoint:
        u = urlparse(endpoint)
        port = u.port or {"https": 443, "http": 80}.get(u.scheme, 4317)
        assert allowed(pols, pod, COLLECTOR, port)
    else:
        assert not allowed(pols, pod, COLLECTOR, 4317)


def test_egress_to_any_address_takes_an_explicit_opt_in() -> None:
    from tests.chart.chartlib import render_values

    pod = Endpoint(pod_labels={"app.kubernetes.io/component": "worker", "app.kubernetes.io/instance": RELEASE})

    def egress(values: dict) -> list[dict]:
        docs = render_values(values)
        nonlocal pod
        pod = _pod(docs, "worker") or pod
        return find(docs, "NetworkPolicy")

    empty = {"networkPolicy": {"egress": {"dns": {"to": []}, "rabbitmq": {"to": []}}}}
    pols = egress(empty)
    assert not allowed(pols, pod, INTERNET, 53, "UDP") and not allowed(pols, pod, INTERNET, 5672)
    assert allowed(pols, pod, BROKER, 5672) and allowed(pols, pod, NEIGHBOUR, 53, "UDP")  # the cluster's pods
    cidr = {"networkPolicy": {"egress": {"rabbitmq": {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}}}}
    pols = egress(cidr)
    assert allowed(pols, pod, INTERNET, 5672) and not allowed(pols, pod, BROKER, 5672)
    opt_in = {"networkPolicy": {"egress": {"dns": {"anyDestination": True}, "rabbitmq": {"anyDestination": True}}}}
    pols = egress(opt_in)
    assert allowed(pols, pod, INTERNET, 53, "UDP") and allowed(pols, pod, INTERNET, 5672)
    assert not allowed(pols, pod, INTERNET, 8080)


def test_kube_api_egress_only_for_components_with_rbac_rules() -> None:
    docs = render_set("kitchen-sink")
    pols = find(docs, "NetworkPolicy")
    worker, api = _pod(docs, "worker"), _pod(docs, "api")
    apiserver = Endpoint(ip="10.96.0.1")
    # 6443: kitchen-sink's OTLP endpoint is https (443, open to any destination) for both components
    assert allowed(pols, worker, apiserver, 6443)
    assert not allowed(pols, api, apiserver, 6443)
    assert allowed(pols, worker, Endpoint(ip="203.0.113.9"), 443), "workersExtra rule"


@pytest.mark.parametrize("value_set", ALL)
def test_monitors_select_the_components_ops_port(value_set: str) -> None:
    docs = render_set(value_set)
    for pm in find(docs, "PodMonitor"):
        selected = [
            o
            for o, m, s in pod_specs(docs)
            if o["kind"] == "Deployment" and labels_match(pm["spec"]["selector"], m["labels"])
        ]
        assert len(selected) == len(deployments(docs))
        for o in selected:
            assert "ops" in container_ports(o["spec"]["template"]["spec"])
        assert pm["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    for sm in find(docs, "ServiceMonitor"):
        svcs = [s for s in find(docs, "Service") if labels_match(sm["spec"]["selector"], s["metadata"]["labels"])]
        assert len(svcs) == len(deployments(docs))
        for s in svcs:
            assert "ops" in {p["name"] for p in s["spec"]["ports"]}


@pytest.mark.parametrize("value_set", [s for s in ALL if any(d["kind"] == "Pod" for d in render_set(s))])
def test_helm_test_pod_targets_the_api_service(value_set: str) -> None:
    docs = render_set(value_set)
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = env_of(pod["spec"]["containers"][0])
    u = urlparse(env["CPW_API_URL"])
    svc = one(docs, "Service", u.hostname)
    assert u.port in [p["port"] for p in svc["spec"]["ports"] if p["name"] == "http"]
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["cpw"] and c["args"][:2] == ["jobs", "submit"] and "--wait" in c["args"]
    token = next(v for v in pod["spec"]["volumes"] if v["name"] == "api-token")
    api = one(docs, "Deployment", f"{RELEASE}-api")["spec"]["template"]["spec"]
    api_tokens = next(v for v in api["volumes"] if v["name"] == "api-tokens")
    assert token["secret"]["secretName"] == api_tokens["secret"]["secretName"]


def test_rabbitmq_cluster_pods_are_not_caught_by_the_release_policies() -> None:
    """The operator copies the RabbitmqCluster's labels onto its pods; those must not match the default deny."""
    docs = render_set("rabbitmq-cluster")
    rc = one(docs, "RabbitmqCluster")
    pod_labels = {**rc["metadata"]["labels"], "app.kubernetes.io/name": rc["metadata"]["name"]}
    for pol in find(docs, "NetworkPolicy"):
        assert not labels_match(pol["spec"]["podSelector"], rc["metadata"]["labels"]), pol["metadata"]["name"]
        assert not labels_match(pol["spec"]["podSelector"], pod_labels), pol["metadata"]["name"]
