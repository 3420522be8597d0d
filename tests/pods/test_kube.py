"""The kubelet's rules the runner applies (kube.py), checked on small specs: a wrong rule would make a broken
chart pass, so each one is pinned to what Kubernetes documents."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.chart.chartlib import VALUE_SETS, pod_specs, render_set
from tests.pods import kube

pytestmark = pytest.mark.timeout(60)


def _pod(spec: dict | None = None) -> kube.Pod:
    pod = kube.Pod("p-1", "ns", {"app": "x"}, {"note": "n"}, spec or {"containers": []})
    pod.objects = {
        ("Secret", "s"): kube.secret({"url": "amqp://h:5672/", "tokens.yaml": "{}"}),
        ("ConfigMap", "c"): {"LEVEL": b"INFO", "mode": b"fast"},
    }
    return pod


def test_quantities() -> None:
    assert kube.quantity("256Mi") == 256 * 2**20
    assert kube.quantity("500m") * 1000 == 500
    assert kube.quantity("1G") == 10**9 and kube.quantity("2") == 2 and kube.quantity("1e3") == 1000


def test_env_resolves_every_source_in_order() -> None:
    container = {
        "name": "app",
        "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}},
        "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CM_"}],
        "env": [
            {"name": "URL", "valueFrom": {"secretKeyRef": {"name": "s", "key": "url"}}},
            {"name": "MISSING", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope", "optional": True}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "LEVEL"}}},
            {"name": "BOTH", "value": "$(POD)/$(CM_mode)/$(UNDEFINED)/$$(POD)"},
        ],
    }
    pod = _pod({"containers": [container]})
    env = kube.container_env(pod, container, {"PATH": "/opt/venv/bin", "LEVEL": "image"})
    assert env["URL"] == "amqp://h:5672/" and "MISSING" not in env
    assert env["POD"] == env["HOSTNAME"] == "p-1" and env["APP"] == "x"
    assert env["MEM"] == str(256 * 2**20) and env["MEM_MI"] == "256" and env["CPU"] == "1"  # ceil(0.5)
    assert env["LEVEL"] == "INFO" and env["CM_mode"] == "fast" and env["PATH"] == "/opt/venv/bin"
    assert env["BOTH"] == "p-1/fast/$(UNDEFINED)/$(POD)"


def test_a_missing_secret_key_fails() -> None:
    container = {"name": "app", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}]}
    with pytest.raises(AssertionError, match="no key nope"):
        kube.container_env(_pod({"containers": [container]}), container, {})


def test_volumes_honour_items_modes_and_projection(tmp_path: Path) -> None:
    pod = _pod({"containers": [{"name": "app", "resources": {"limits": {"memory": "1Mi"}}}]})
    kube.materialize(
        pod,
        {"name": "v", "secret": {"secretName": "s", "defaultMode": 0o440, "items": [{"key": "url", "path": "a/u"}]}},
        tmp_path / "secret",
    )
    assert (tmp_path / "secret/a/u").read_text() == "amqp://h:5672/"
    assert stat.S_IMODE((tmp_path / "secret/a/u").stat().st_mode) == 0o440
    assert not (tmp_path / "secret/tokens.yaml").exists()  # items select keys
    kube.materialize(pod, {"name": "c", "configMap": {"name": "c"}}, tmp_path / "cm")
    assert sorted(p.name for p in (tmp_path / "cm").iterdir()) == ["LEVEL", "mode"]
    assert stat.S_IMODE((tmp_path / "cm/LEVEL").stat().st_mode) == 0o644
    projected = {
        "defaultMode": 0o400,
        "sources": [
            {"secret": {"name": "s", "items": [{"key": "tokens.yaml", "path": "t", "mode": 0o444}]}},
            {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {
                "downwardAPI": {
                    "items": [
                        {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory"}}
                    ]
                }
            },
        ],
    }
    kube.materialize(pod, {"name": "p", "projected": projected}, tmp_path / "p")
    assert stat.S_IMODE((tmp_path / "p/t").stat().st_mode) == 0o444
    assert (tmp_path / "p/name").read_text() == "p-1" and (tmp_path / "p/mem").read_text() == str(2**20)
    assert stat.S_IMODE((tmp_path / "p/name").stat().st_mode) == 0o400


def test_an_unknown_field_is_not_understood() -> None:
    spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "shareProcessNamespace": True,
        "containers": [{"name": "a", "securityContext": {"readOnlyRootFilesystem": True}, "stdin": True}],
        "volumes": [{"name": "v", "hostPath": {"path": "/"}}],
    }
    assert kube.not_understood(spec) == [
        "spec.shareProcessNamespace",
        "spec.containers[0].stdin",
        "spec.volumes[0].hostPath",
    ]
    spec["enableServiceLinks"] = True  # the runner makes no *_SERVICE_HOST variables
    assert "spec.enableServiceLinks (not false)" in kube.not_understood(spec)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_value_set_renders_only_modelled_fields(value_set: str) -> None:
    """Even value sets tests/pods does not start: a new chart feature must be taught to the runner first."""
    problems = [
        f"{doc['metadata']['name']}: {path}"
        for doc, _, spec in pod_specs(render_set(value_set))
        for path in kube.not_understood(spec)
    ]
    assert not problems


def test_mounts_honour_subpath_readonly_and_emptydir(tmp_path: Path) -> None:
    """The bwrap mounts of volumeMounts: subPath binds one file, readOnly binds read-only, emptyDir is a tmpfs."""
    from tests.pods.runner import PodRun

    container = {
        "name": "app",
        "volumeMounts": [
            {"name": "s", "mountPath": "/etc/app/url", "subPath": "url", "readOnly": True},
            {"name": "c", "mountPath": "/config"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    spec = {
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [
            {"name": "s", "secret": {"secretName": "s"}},
            {"name": "c", "configMap": {"name": "c"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    run = PodRun(_pod(spec), {}, [], [], tmp_path / "venv", tmp_path / "pod", "", [], tmp_path / "net")
    args = run._mounts()
    volumes = tmp_path / "pod" / "volumes"
    assert args[:3] == ["--ro-bind", str(volumes / "s" / "url"), "/etc/app/url"]
    assert args[3:6] == ["--bind", str(volumes / "c"), "/config"]
    assert args[6:] == ["--size", str(64 * 2**20), "--perms", "1777", "--tmpfs", "/tmp"]
    assert (volumes / "s" / "url").read_text() == "amqp://h:5672/"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"readinessProbe": {"exec": {"command": ["true"]}}}, "spec.containers[0].readinessProbe.exec"),
        ({"livenessProbe": {"grpc": {"port": 8001}}}, "spec.containers[0].livenessProbe.grpc"),
        ("initContainers", "spec.initContainers"),
        ("sidecar", "spec.containers (2 containers: the runner runs one per pod)"),
    ],
)
def test_pod_shapes_the_runner_does_not_run_are_refused(change: dict | str, named: str) -> None:
    """No value set renders exec/grpc probes, init containers or a second container today; a chart change that
    adds one must fail here by name (and in every value set's check above) until the runner runs it."""
    container = {"name": "app", "securityContext": {"readOnlyRootFilesystem": True}}
    spec: dict = {"automountServiceAccountToken": False, "enableServiceLinks": False, "containers": [container]}
    if change == "initContainers":
        spec["initContainers"] = [dict(container, name="migrate")]
    elif change == "sidecar":
        spec["containers"].append(dict(container, name="proxy"))
    else:
        container.update(change)
    assert kube.not_understood(spec) == [named]


def test_broker_hosts_come_from_the_secrets_broker_urls() -> None:
    from tests.pods.cluster import broker_hosts

    objects = {
        ("Secret", "a"): kube.secret({"url": "amqp://u:p@rabbitmq.messaging.svc:5672/", "tokens.yaml": "{}"}),
        ("Secret", "b"): kube.secret({"management-url": "http://u:p@mgmt.ns.svc:15672/", "port": "5672"}),
        ("Secret", "c"): kube.secret({"otlp": "http://otel.monitoring.svc:4318", "amqps": "amqps://tls.svc/"}),
        ("ConfigMap", "d"): {"url": b"amqp://configmap.svc:5672/"},
    }
    assert broker_hosts(objects, {5672: 1, 15672: 2}) == {"rabbitmq.messaging.svc", "mgmt.ns.svc"}


def test_postgres_hosts_come_from_the_secrets_dsns() -> None:
    from tests.pods.cluster import POSTGRES_SCHEMES, secret_hosts

    objects = {
        ("Secret", "a"): kube.secret({"dsn": "postgresql://u:p@db.data.svc:5432/cpw", "url": "amqp://r.svc:5672/"}),
        ("Secret", "b"): kube.secret({"uri": "postgres://u:p@pg-rw.ns.svc/app", "other": "postgresql://x.svc:6432/"}),
    }
    assert secret_hosts(objects, POSTGRES_SCHEMES, {5432}) == {"db.data.svc", "pg-rw.ns.svc"}


@pytest.mark.parametrize(
    ("host", "vhost_name", "uri", "vhost"),
    [
        ("http://u:p@h.ns.svc:15672", "/", "http://h.ns.svc:15672/api/queues/%2F/provider.jobs", "/"),
        ("http://u:p@h.ns.svc:15672/", "", "http://h.ns.svc:15672/api/queues/%2F/provider.jobs", "/"),
        ("http://h:15672/myhost", "", "http://h:15672/api/queues/myhost/provider.jobs", "myhost"),
        ("http://h:15672/rmq/api/myhost", "other", "http://h:15672/rmq/api/api/queues/other/provider.jobs", "other"),
        ("http://h:15672/%2F", "", "http://h:15672/api/queues/%2F/provider.jobs", "/"),
        ("https://h/", "a b/c", "https://h/api/queues/a+b%2Fc/provider.jobs", "a b/c"),
    ],
)
def test_keda_builds_the_management_uri_as_its_scaler(host: str, vhost_name: str, uri: str, vhost: str) -> None:
    """getVhostAndPathFromURL: the last path segment is the vhost unless vhostName (query-escaped) replaces it;
    none means "/" as %2F; the segments before it stay a sub path; credentials go to basic auth."""
    from tests.pods.keda import RabbitTrigger

    trigger = RabbitTrigger(host, "provider.jobs", vhost_name, "", "", 0.0, False)
    assert trigger.management_uri() == uri and trigger.vhost() == vhost
    assert RabbitTrigger(host, "q", "", "", "", 0.0, False).credentials() == (
        ("u", "p") if "u:p@" in host else ("", "")
    )
    assert RabbitTrigger(host, "q", "", "user", "pass", 0.0, False).credentials() == ("user", "pass")


def test_keda_builds_the_regex_uri_as_its_scaler() -> None:
    """useRegex: the vhost's queue list filtered by the query-escaped regex, one page of KEDA's default size."""
    from tests.pods.keda import RabbitTrigger

    trigger = RabbitTrigger("http://u:p@h:15672/", r"^provider\.jobs\.retry\.(2|3)$", "/", "", "", 0.0, False, True)
    assert trigger.management_uri() == (
        "http://h:15672/api/queues/%2F?page=1&use_regex=true&pagination=false"
        "&name=%5Eprovider%5C.jobs%5C.retry%5C.%282%7C3%29%24&page_size=100"
    )


def test_keda_fields_it_does_not_model_are_refused() -> None:
    from tests.pods.keda import SCALED_OBJECT, replicas

    spec = {"scaleTargetRef": {"name": "w"}, "idleReplicaCount": 0, "triggers": [{"type": "rabbitmq", "x": 1}]}
    assert kube.not_understood(spec, SCALED_OBJECT, "ScaledObject.spec") == [
        "ScaledObject.spec.idleReplicaCount",
        "ScaledObject.spec.triggers[0].x",
    ]
    assert [replicas({"spec": {"minReplicaCount": m}}, a) for m in (0, 5) for a in (False, True)] == [0, 1, 5, 5]


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_value_set_renders_only_modelled_keda_and_monitor_fields(value_set: str) -> None:
    """Also for the value sets tests/pods does not start: a new KEDA or monitoring feature must be taught to
    keda.py or monitor.py first."""
    from tests.pods.keda import SCALED_OBJECT, TRIGGER_AUTHENTICATION
    from tests.pods.monitor import MONITORS

    rules = {"ScaledObject": SCALED_OBJECT, "TriggerAuthentication": TRIGGER_AUTHENTICATION, **MONITORS}
    problems = [
        f"{doc['kind']} {doc['metadata']['name']}: {path}"
        for doc in render_set(value_set)
        if doc["kind"] in rules
        for path in kube.not_understood(doc["spec"], rules[doc["kind"]], f"{doc['kind']}.spec")
    ]
    assert not problems


def test_label_selectors() -> None:
    from tests.pods.monitor import selects

    labels = {"app": "x", "component": "worker"}
    assert selects({"matchLabels": {"app": "x"}}, labels)
    assert not selects({"matchLabels": {"app": "y"}}, labels)
    expressions = [
        ({"key": "component", "operator": "In", "values": ["worker", "api"]}, True),
        ({"key": "component", "operator": "NotIn", "values": ["worker"]}, False),
        ({"key": "tier", "operator": "NotIn", "values": ["db"]}, True),
        ({"key": "app", "operator": "Exists"}, True),
        ({"key": "app", "operator": "DoesNotExist"}, False),
    ]
    for expression, expected in expressions:
        assert selects({"matchExpressions": [expression]}, labels) is expected, expression
