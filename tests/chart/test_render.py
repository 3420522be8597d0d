"""The value-set matrix renders with the real Helm engine, lints clean, and the seed's keys do what the seed says."""

from __future__ import annotations

import helm_python
import pytest
import yaml

from tests.chart.chartlib import (
    CHART,
    CI_VALUES,
    CLUSTER_SCOPED,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    env_of,
    find,
    lint_problems,
    notes,
    one,
    pod_specs,
    render_set,
    render_values,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_value_set_renders(value_set: str) -> None:
    docs = render_set(value_set)
    assert docs, "nothing rendered"
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d["__template"]
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"].get("namespace") == NAMESPACE, (
                f"{d['kind']}/{d['metadata']['name']} ({d['__template']}) has no namespace: {{{{ .Release.Namespace }}}}"
            )
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_lint_strict_has_no_errors(value_set: str) -> None:
    assert lint_problems(VALUE_SETS[value_set]) == []


def _worker(docs: list[dict]) -> dict:
    return one(docs, "Deployment", f"{RELEASE}-worker")


def test_defaults_render_both_components_without_autoscaling() -> None:
    docs = render_set("default")
    assert _worker(docs)["spec"]["replicas"] == 2
    assert one(docs, "Deployment", f"{RELEASE}-api")
    assert not find(docs, "ScaledObject")
    # monitoring CRs are opt-in (the offline engine presents no CRD API versions to gate on)
    assert not any(find(docs, k) for k in ("PodMonitor", "ServiceMonitor", "PrometheusRule"))


def test_seed_quickstart_gives_three_workers() -> None:
    assert _worker(render_set("seed-quickstart"))["spec"]["replicas"] == 3


def test_max_result_bytes_reaches_the_worker_env() -> None:
    """The worker's result cap (issue 16) is a chart value; the default is the setting's default, 256 KiB."""
    default = env_of(_worker(render_set("default"))["spec"]["template"]["spec"]["containers"][0])
    assert default["CPW_MAX_RESULT_BYTES"] == "262144"
    raised = render_values({"workers": {"maxResultBytes": 1048576}})
    assert env_of(_worker(raised)["spec"]["template"]["spec"]["containers"][0])["CPW_MAX_RESULT_BYTES"] == "1048576"


def test_the_tenant_rate_limit_reaches_the_api_env() -> None:
    """Issue 20: on by default; a fractional rate and 0 (off) pass through as the API reads them."""
    for rate, burst, expected in ((2.5, 7, "2.5"), (0, 1, "0")):
        docs = render_values({"api": {"tenantRate": rate, "tenantBurst": burst}})
        env = env_of(one(docs, "Deployment", f"{RELEASE}-api")["spec"]["template"]["spec"]["containers"][0])
        assert (env["CPW_API_TENANT_RATE"], env["CPW_API_TENANT_BURST"]) == (expected, str(burst))


def test_sync_threads_default_to_the_workers_own_default() -> None:
    """Unset, the worker sizes its sync threads by CPW_MAX_CONCURRENT_JOBS; set, the chart passes it on."""
    container = _worker(render_set("default"))["spec"]["template"]["spec"]["containers"][0]
    assert "CPW_SYNC_THREADS" not in env_of(container)
    container = _worker(render_values({"workers": {"syncThreads": 8}}))["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["CPW_SYNC_THREADS"] == "8"


def test_every_ci_values_file_is_in_the_value_set_matrix() -> None:
    """A values file in ci/ that no value set loads would be neither rendered, linted nor validated."""
    sets = list(VALUE_SETS.values())
    files = sorted(CI_VALUES.glob("*-values.yaml"))
    assert [p.name for p in files if (yaml.safe_load(p.read_text()) or {}) not in sets] == []


def test_seed_development_example() -> None:
    dep = _worker(render_set("seed-development"))
    assert dep["spec"]["replicas"] == 1
    assert env_of(dep["spec"]["template"]["spec"]["containers"][0])["CPW_LOG_LEVEL"] == "DEBUG"


def test_seed_production_example() -> None:
    docs = render_set("seed-production")
    dep = _worker(docs)
    spec = dep["spec"]["template"]["spec"]
    env = env_of(spec["containers"][0])
    assert dep["spec"]["replicas"] == 5
    assert env["CPW_LOG_LEVEL"] == "INFO"
    assert one(docs, "PodDisruptionBudget", f"{RELEASE}-worker")["spec"]["minAvailable"] == 3
    # the seed's required anti-affinity term has no labelSelector; the chart scopes it to the workers
    terms = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["topologyKey"] == "kubernetes.io/hostname"
    assert terms[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert terms[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE


def test_seed_high_throughput_example() -> None:
    """20 workers of 10 jobs each, as the seed writes it: no autoscaling, so the replica count is rendered."""
    docs = render_set("seed-high-throughput")
    dep = _worker(docs)
    assert dep["spec"]["replicas"] == 20 and not find(docs, "ScaledObject")
    assert env_of(dep["spec"]["template"]["spec"]["containers"][0])["CPW_MAX_CONCURRENT_JOBS"] == "10"


def test_high_throughput_scaled_by_keda() -> None:
    docs = render_set("high-throughput-keda")
    dep = _worker(docs)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert "replicas" not in dep["spec"], "KEDA owns the replica count"
    so = one(docs, "ScaledObject", f"{RELEASE}-worker")
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (10, 50)
    cpu = [t for t in so["spec"]["triggers"] if t["type"] == "cpu"]
    assert cpu and cpu[0]["metadata"]["value"] == "70" and cpu[0]["metricType"] == "Utilization"
    assert env_of(c)["CPW_LOG_LEVEL"] == "WARNING" and env_of(c)["CPW_MAX_CONCURRENT_JOBS"] == "10"
    assert c["resources"]["limits"] == {"cpu": "2000m", "memory": "2Gi"}
    assert c["resources"]["requests"], "requests keep their defaults when only limits are given"


def test_components_can_be_disabled() -> None:
    workers_only = render_set("workers-only")
    assert not [
        d for d in workers_only if d["metadata"]["labels"].get("app.kubernetes.io/component") in ("api", "helm-test")
    ]
    api_only = render_set("api-only")
    assert not [d for d in api_only if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]


def test_api_values_land_in_the_api_subchart() -> None:
    docs = render_values(
        {"api": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}}}
    )
    c = one(docs, "Deployment", f"{RELEASE}-api")["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}


def test_images_by_tag_or_digest_and_registry() -> None:
    docs = render_values(
        {"workers": {"image": {"tag": "1.2.3"}}, "api": {"image": {"digest": "sha256:" + "a" * 64, "tag": "ignored"}}}
    )
    images = {d["metadata"]["name"]: s["containers"][0]["image"] for d, _, s in pod_specs(docs)}
    assert images[f"{RELEASE}-worker"] == "ghcr.io/controlplane-workers/worker:1.2.3"
    assert images[f"{RELEASE}-api"] == "ghcr.io/controlplane-workers/api-adapter@sha256:" + "a" * 64
    docs = render_set("kitchen-sink")
    img = _worker(docs)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert img == "registry.example.com/mirror/ghcr.io/controlplane-workers/worker:1.2.3"
    pull = _worker(docs)["spec"]["template"]["spec"]["imagePullSecrets"]
    assert pull == [{"name": "regcred"}, {"name": "workers-regcred"}]


def test_kitchen_sink_passes_every_extra_through() -> None:
    docs = render_set("kitchen-sink")
    spec = _worker(docs)["spec"]["template"]
    pod = spec["spec"]
    c = pod["containers"][0]
    assert env_of(c)["ACME_REGION"] == "westeurope"
    assert {"name": "provider-credentials", "mountPath": "/var/run/secrets/acme", "readOnly": True} in c["volumeMounts"]
    assert any(v["name"] == "provider-credentials" for v in pod["volumes"])
    assert spec["metadata"]["annotations"]["example.com/team"] == "platform"
    assert spec["metadata"]["labels"]["example.com/tier"] == "backend"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["value"] == "workers"
    assert pod["priorityClassName"] == "high"
    assert "affinity" not in pod  # podAntiAffinityPreset: none
    tsc = pod["topologySpreadConstraints"][0]
    assert tsc["topologyKey"] == "kubernetes.io/hostname" and tsc["labelSelector"]["matchLabels"]
    assert env_of(c)["CPW_JOBS_QUEUE"] == "acme.jobs" and env_of(c)["CPW_QUEUE_TYPE"] == "quorum"
    assert env_of(c)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://otel.example.com"
    assert one(docs, "Role")["rules"][0]["resources"] == ["configmaps"]
    assert one(docs, "RoleBinding")["subjects"][0]["name"] == f"{RELEASE}-worker"
    assert pod["automountServiceAccountToken"] is True, "RBAC rules need the token"
    assert one(docs, "HorizontalPodAutoscaler", f"{RELEASE}-api")
    assert all(d["metadata"]["labels"]["team"] == "platform" for d in docs)


def test_cluster_scoped_rbac_option() -> None:
    docs = render_values(
        {
            "workers": {
                "rbac": {
                    "create": True,
                    "clusterScoped": True,
                    "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
                }
            }
        }
    )
    role = one(docs, "ClusterRole")
    binding = one(docs, "ClusterRoleBinding")
    assert "namespace" not in role["metadata"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["namespace"] == NAMESPACE


def test_rabbitmq_cluster_wires_the_default_user_secret() -> None:
    docs = render_set("rabbitmq-cluster")
    rc = one(docs, "RabbitmqCluster", f"{RELEASE}-rabbitmq")
    assert rc["spec"]["replicas"] == 3
    assert "rabbitmq_prometheus" in rc["spec"]["rabbitmq"]["additionalPlugins"]
    assert rc["spec"]["resources"]["limits"]
    assert not find(docs, "Secret", f"{RELEASE}-rabbitmq"), "the operator makes the Secret"
    vol = next(v for v in _worker(docs)["spec"]["template"]["spec"]["volumes"] if v["name"] == "rabbitmq")
    src = vol["projected"]["sources"][0]["secret"]
    assert src["name"] == f"{RELEASE}-rabbitmq-default-user"
    assert src["items"] == [{"key": "connection_string", "path": "url"}]
    ta = one(docs, "TriggerAuthentication")
    assert {(r["parameter"], r["key"]) for r in ta["spec"]["secretTargetRef"]} == {
        ("username", "username"),
        ("password", "password"),
    }
    trig = one(docs, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert trig["host"] == f"http://{RELEASE}-rabbitmq.{NAMESPACE}.svc:15672/"


def test_an_operator_cluster_defaults_to_a_quorum_queue_and_streams_on_every_node() -> None:
    env = env_of(_worker(render_set("rabbitmq-cluster"))["spec"]["template"]["spec"]["containers"][0])
    assert env["CPW_QUEUE_TYPE"] == "quorum" and env["CPW_QUEUE_DELIVERY_LIMIT"] == "20"
    assert env["CPW_STREAM_REPLICAS"] == "3"
    api = one(render_set("rabbitmq-cluster"), "Deployment", f"{RELEASE}-api")
    assert env_of(api["spec"]["template"]["spec"]["containers"][0])["CPW_STREAM_REPLICAS"] == "3", "both must agree"
    five = {"global": {"rabbitmq": {"cluster": {"enabled": True, "replicas": 5}}}}
    assert (
        env_of(_worker(render_values(five))["spec"]["template"]["spec"]["containers"][0])["CPW_STREAM_REPLICAS"] == "5"
    )


def test_without_an_operator_cluster_the_queue_stays_classic_and_streams_take_the_broker_default() -> None:
    env = env_of(_worker(render_set("default"))["spec"]["template"]["spec"]["containers"][0])
    assert env["CPW_QUEUE_TYPE"] == "classic" and env["CPW_STREAM_REPLICAS"] == "0"
    single = {"global": {"rabbitmq": {"cluster": {"enabled": True, "replicas": 1}}}}
    assert env_of(_worker(render_values(single))["spec"]["template"]["spec"]["containers"][0])["CPW_QUEUE_TYPE"] == (
        "classic"
    )


def test_a_classic_queue_on_a_cluster_renders_when_explicitly_allowed() -> None:
    # An existing release whose classic queue and streams predate the cluster defaults pins them.
    values = {
        "global": {
            "rabbitmq": {"cluster": {"enabled": True}},
            "broker": {"queueType": "classic", "allowClassicQueueOnCluster": True, "streamReplicas": 0},
        }
    }
    env = env_of(_worker(render_values(values))["spec"]["template"]["spec"]["containers"][0])
    assert env["CPW_QUEUE_TYPE"] == "classic" and env["CPW_STREAM_REPLICAS"] == "0"


def test_chart_made_secrets_hold_only_what_was_given() -> None:
    docs = render_set("keda-on")
    sec = one(docs, "Secret", f"{RELEASE}-rabbitmq")
    assert set(sec["stringData"]) == {"url", "management-url"}
    assert not find(docs, "Secret", f"{RELEASE}-api-tokens"), "no default token"
    docs = render_set("kitchen-sink")
    tok = one(docs, "Secret", f"{RELEASE}-api-tokens")
    assert set(tok["stringData"]) == {"tokens.yaml", "helm-test-token"}
    assert tok["stringData"]["helm-test-token"] == "token-for-tenant-a"


def test_default_install_creates_no_secret_and_no_password() -> None:
    docs = render_set("default")
    assert not find(docs, "Secret"), "defaults must not invent credentials"


def test_notes_tell_how_to_reach_the_api_watch_the_queue_and_find_dashboards() -> None:
    text = notes(
        {
            "monitoring": {"dashboards": {"enabled": True}},
            "workers": {"autoscaling": {"enabled": True}},
            "global": {"rabbitmq": {"existingSecret": "s"}},
        }
    )
    assert f"port-forward svc/{RELEASE}-api 8000" in text
    assert "provider.jobs" in text and "scaledobject" in text
    assert "grafana_dashboard" in text
    assert f"helm test {RELEASE}" in text
    assert f"create secret generic {RELEASE}-rabbitmq" in notes({})


@pytest.mark.parametrize("subchart", ["worker", "api-adapter"])
def test_subchart_stands_alone_with_the_library_as_its_dependency(subchart: str, tmp_path) -> None:
    """Each subchart declares common-lib (file://../common-lib): `helm dependency update` packs it, and the
    subchart then renders and lints on its own - the helpers are shared, not copied."""
    import shutil

    for name in (subchart, "common-lib"):
        shutil.copytree(CHART / "charts" / name, tmp_path / name)
    helm_python.dependency_update(tmp_path / subchart)
    values = {"global": {"rabbitmq": {"existingSecret": "s"}}}
    with helm_python.Chart.load(tmp_path / subchart) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert any(k.endswith("deployment.yaml") and "kind: Deployment" in v for k, v in out.items())
    report = helm_python.lint(tmp_path / subchart, values, strict=True, namespace=NAMESPACE)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report


def test_render_cli_prints_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.chart import render

    assert render.main(["--set", "workers.replicaCount=3", "-f", str(CHART / "ci" / "keda-values.yaml")]) == 0
    out = capsys.readouterr().out
    assert (
        "kind: ScaledObject" in out and "# Source: controlplane-workers/charts/workers/templates/deployment.yaml" in out
    )
    assert render.main(["--set", "workers.replicaCont=3"]) == 1
