"""The PostgreSQL operation store in the chart (issue 19): the projector Deployment, the DSN as a file, the
CloudNativePG Cluster, the NetworkPolicies that let only the API and the projector reach PostgreSQL, and the
values rules at and over their bounds."""

from __future__ import annotations

import helm_python
import pytest

from tests.chart.chartlib import RELEASE, env_of, find, labels_match, one, pod_specs, render_set, render_values
from tests.chart.test_invariants import DNS, INTERNET, PROMETHEUS, Endpoint, _pod, allowed

pytestmark = pytest.mark.timeout(60)

POSTGRESQL = {"global": {"operationStore": {"type": "postgresql"}, "postgresql": {"existingSecret": "pg-dsn"}}}
DATABASE = Endpoint(pod_labels={"app": "postgres"}, namespace="databases")
MANAGED = Endpoint(ip="10.30.0.7")  # inside ci/postgresql-values.yaml's CIDR


def _containers(docs: list[dict]) -> dict[str, tuple[dict, dict]]:
    """component -> (its container, its pod spec)."""
    return {
        meta["labels"]["app.kubernetes.io/component"]: (spec["containers"][0], spec)
        for _, meta, spec in pod_specs(docs)
    }


@pytest.mark.parametrize("value_set", ["default", "production", "kitchen-sink"])
def test_the_stream_store_renders_no_projector_and_no_postgresql(value_set: str) -> None:
    docs = render_set(value_set)
    assert not [d for d in docs if "projector" in d["metadata"]["name"] or "postgresql" in d["metadata"]["name"]]
    assert not find(docs, "Cluster")
    api, _ = _containers(docs)["api"]
    assert "CPW_API_STORE" not in env_of(api) and "CPW_POSTGRES_URL_FILE" not in env_of(api)


@pytest.mark.parametrize("value_set", ["postgresql", "postgresql-cluster"])
def test_api_and_projector_read_the_dsn_from_a_mounted_file(value_set: str) -> None:
    docs = render_set(value_set)
    containers = _containers(docs)
    cluster = bool(find(docs, "Cluster"))
    secret, key = (f"{RELEASE}-postgresql-app", "uri") if cluster else ("cpw-postgresql", "dsn")
    for component in ("api", "projector"):
        container, spec = containers[component]
        env = env_of(container)
        assert env["CPW_API_STORE"] == "postgresql"
        path = env["CPW_POSTGRES_URL_FILE"]
        mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        assert mount["readOnly"] is True
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == secret
        assert volume["secret"]["items"] == [{"key": key, "path": path.rsplit("/", 1)[1]}]
        assert not any("POSTGRES" in e["name"] and "value" in e and "://" in e["value"] for e in container["env"])
    assert "CPW_POSTGRES_URL_FILE" not in env_of(containers["worker"][0]), "workers never talk to PostgreSQL"
    projector, _ = containers["projector"]
    assert projector["command"] == ["cpw", "indexer"]
    deployment = one(docs, "Deployment", f"{RELEASE}-projector")
    assert deployment["spec"]["replicas"] == (3 if cluster else 2), "one writes, the rest stand by"
    pdb = one(docs, "PodDisruptionBudget", f"{RELEASE}-projector")
    assert labels_match(pdb["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("value_set", ["postgresql", "postgresql-cluster"])
def test_only_the_api_and_the_projector_reach_postgresql(value_set: str) -> None:
    docs = render_set(value_set)
    pols = find(docs, "NetworkPolicy")
    worker, api, projector = _pod(docs, "worker"), _pod(docs, "api"), _pod(docs, "projector")
    assert worker and api and projector
    if find(docs, "Cluster"):
        database = Endpoint(pod_labels={"cnpg.io/cluster": f"{RELEASE}-postgresql", "cnpg.io/instanceRole": "primary"})
    else:
        database = MANAGED
    for pod in (api, projector):
        assert allowed(pols, pod, database, 5432)
        assert not allowed(pols, pod, database, 5433), "the PostgreSQL port only"
        if database is MANAGED:  # ci/postgresql-values.yaml names the database's CIDR: nothing else
            assert not allowed(pols, pod, DATABASE, 5432)
    assert not allowed(pols, worker, database, 5432), "no other pod of the release reaches PostgreSQL"
    # the projector: DNS and the broker like the others, its ops port from the monitoring namespace only
    assert allowed(pols, projector, DNS, 53, "UDP")
    broker = (
        Endpoint(pod_labels={"app.kubernetes.io/name": f"{RELEASE}-rabbitmq"})
        if find(docs, "RabbitmqCluster")
        else Endpoint(pod_labels={"app.kubernetes.io/name": "rabbitmq"}, namespace="messaging")
    )
    assert allowed(pols, projector, broker, 5672)
    assert allowed(pols, PROMETHEUS, projector, projector.ports["ops"])
    assert not allowed(pols, api, projector, projector.ports["ops"])
    assert not allowed(pols, projector, INTERNET, 5432) and not allowed(pols, projector, INTERNET, 443)


def test_the_cnpg_cluster_pods_are_not_caught_by_the_release_policies() -> None:
    docs = render_set("postgresql-cluster")
    cluster = one(docs, "Cluster")
    pod_labels = {**cluster["metadata"]["labels"], "cnpg.io/cluster": cluster["metadata"]["name"]}
    for pol in find(docs, "NetworkPolicy"):
        assert not labels_match(pol["spec"]["podSelector"], pod_labels), pol["metadata"]["name"]
    assert cluster["spec"]["instances"] == 3 and cluster["spec"]["storage"] == {"size": "10Gi", "storageClass": "fast"}


def test_a_managed_database_without_a_cidr_is_reached_only_with_an_opt_in() -> None:
    pols = find(render_values(POSTGRESQL), "NetworkPolicy")
    api = Endpoint(
        pod_labels={
            "app.kubernetes.io/name": "controlplane-workers",
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "api",
        }
    )
    assert allowed(pols, api, DATABASE, 5432), "empty `to`: the cluster's pods"
    assert not allowed(pols, api, MANAGED, 5432)
    opt_in = {**POSTGRESQL, "networkPolicy": {"egress": {"postgresql": {"anyDestination": True}}}}
    assert allowed(find(render_values(opt_in), "NetworkPolicy"), api, MANAGED, 5432)


@pytest.mark.parametrize(
    ("values", "error", "words"),
    [
        pytest.param(
            {"global": {"operationStore": {"type": "postgresql"}}},
            helm_python.HelmValuesError,
            ["/global/postgresql", "existingSecret", "cluster/enabled"],
            id="postgresql without a DSN",
        ),
        pytest.param(
            {"global": {"operationStore": {"type": "postgresql"}, "postgresql": {"existingSecret": ""}}},
            helm_python.HelmValuesError,
            ["/global/postgresql/existingSecret", "minLength"],
            id="postgresql with an empty secret name",
        ),
        pytest.param(
            {"global": {"operationStore": {"type": "redis"}}},
            helm_python.HelmValuesError,
            ["/global/operationStore/type", "stream", "postgresql"],
            id="an unknown store",
        ),
        pytest.param(
            {
                "global": {
                    "operationStore": {"type": "postgresql"},
                    "postgresql": {"existingSecret": "s", "cluster": {"enabled": True}},
                }
            },
            helm_python.HelmRenderError,
            ["global.postgresql.cluster.enabled", "leave global.postgresql.existingSecret empty"],
            id="a secret and the cluster",
        ),
        pytest.param(
            {**POSTGRESQL, "api": {"projector": {"podDisruptionBudget": {"minAvailable": 2}}}},
            helm_python.HelmRenderError,
            ["api.projector.podDisruptionBudget.minAvailable (2)", "below the fewest replicas (2"],
            id="a projector PDB that blocks drains",
        ),
        pytest.param(
            {**POSTGRESQL, "api": {"projector": {"replicaCount": 0}}},
            helm_python.HelmValuesError,
            ["/projector/replicaCount"],
            id="no projector",
        ),
        pytest.param(
            {**POSTGRESQL, "api": {"projector": {"retentionDays": 3651}}},
            helm_python.HelmValuesError,
            ["/projector/retentionDays", "want 3,650"],
            id="a retention over ten years",
        ),
        pytest.param(
            {**POSTGRESQL, "api": {"projector": {"backlogMessages": 0}}},
            helm_python.HelmValuesError,
            ["/projector/backlogMessages"],
            id="no backlog",
        ),
        pytest.param(
            {**POSTGRESQL, "api": {"projector": {"retentionDays": 0}}},
            helm_python.HelmValuesError,
            ["/projector/retentionDays"],
            id="no retention",
        ),
    ],
)
def test_bad_store_values_fail_with_the_value_to_fix(values: dict, error: type, words: list[str]) -> None:
    with pytest.raises(error) as raised:
        render_values(values)
    for word in words:
        assert word in str(raised.value), f"{word!r} not in: {raised.value}"


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(POSTGRESQL, id="an existing secret"),
        pytest.param(
            {"global": {"operationStore": {"type": "postgresql"}, "postgresql": {"cluster": {"enabled": True}}}},
            id="the cluster",
        ),
        pytest.param({**POSTGRESQL, "api": {"projector": {"replicaCount": 1}}}, id="one projector"),
        pytest.param({**POSTGRESQL, "api": {"projector": {"retentionDays": 1}}}, id="a retention of one day"),
        pytest.param({**POSTGRESQL, "api": {"projector": {"backlogMessages": 1}}}, id="a backlog of one message"),
        pytest.param({**POSTGRESQL, "api": {"projector": {"retentionDays": 3650}}}, id="a retention of ten years"),
        pytest.param(
            {**POSTGRESQL, "api": {"projector": {"podDisruptionBudget": {"minAvailable": 1}}}},
            id="a PDB just below the replicas",
        ),
        pytest.param(
            {"global": {"postgresql": {"cluster": {"enabled": True}}}},
            id="a cluster configured while the store is stream (renders nothing)",
        ),
    ],
)
def test_good_store_values_render(values: dict) -> None:
    docs = render_values(values)
    postgresql = values["global"].get("operationStore", {}).get("type") == "postgresql"
    assert bool(find(docs, "Deployment", f"{RELEASE}-projector")) == postgresql
    cluster = values["global"]["postgresql"].get("cluster", {}).get("enabled", False)
    assert bool(find(docs, "Cluster")) == (postgresql and cluster)
    retention = values.get("api", {}).get("projector", {}).get("retentionDays", 30)
    if postgresql:
        projector, _ = _containers(docs)["projector"]
        assert env_of(projector)["CPW_OPERATION_RETENTION"] == str(retention), "the active projector drops past it"
        backlog = values.get("api", {}).get("projector", {}).get("backlogMessages", 512)
        assert env_of(projector)["CPW_INDEXER_BACKLOG_MESSAGES"] == str(backlog)
