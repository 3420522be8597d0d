"""Pod Security Standards "restricted" on every pod, credentials only as files, requests/limits and probes
everywhere, no ServiceAccount token unless needed, checksums that roll pods when a Secret's source changes."""

from __future__ import annotations

import pytest

from tests.chart.chartlib import RELEASE, VALUE_SETS, env_of, one, pod_specs, render_set, render_values

pytestmark = pytest.mark.timeout(60)

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_pod_meets_pss_restricted(value_set: str) -> None:
    pods = list(pod_specs(render_set(value_set)))
    assert pods
    for obj, _meta, spec in pods:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert psc["runAsUser"] >= 10000 and psc["runAsGroup"] >= 10000, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), where
        for vol in spec.get("volumes", []):
            kinds = set(vol) - {"name"}
            assert kinds <= RESTRICTED_VOLUME_TYPES, f"{where}: volume {vol['name']} is {kinds}"
        containers = spec["containers"] + spec.get("initContainers", [])
        for c in containers:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], f"{where}: drop must be exactly ['ALL'] (upper case)"
            assert not sc["capabilities"].get("add"), where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc.get("privileged") in (None, False), where
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 10000, where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            # the only writable path is an emptyDir on /tmp
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp, f"{where}: no /tmp mount"
            vol = next(v for v in spec["volumes"] if v["name"] == tmp[0]["name"])
            assert "emptyDir" in vol, where
            # requests and limits for cpu and memory
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), f"{where}: {part}"


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_credentials_are_files_never_env(value_set: str) -> None:
    for obj, _meta, spec in pod_specs(render_set(value_set)):
        for c in spec["containers"]:
            for e in c.get("env", []):
                assert "secretKeyRef" not in (e.get("valueFrom") or {}), f"{obj['metadata']['name']}: {e['name']}"
            assert not any("secretRef" in src for src in c.get("envFrom", [])), obj["metadata"]["name"]
            for name, value in env_of(c).items():
                if isinstance(value, str):
                    assert "://" not in value or "@" not in value, f"{name} carries credentials in env"


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_long_running_containers_have_three_probes_on_the_ops_port(value_set: str) -> None:
    for obj, _meta, spec in pod_specs(render_set(value_set)):
        if obj["kind"] == "Pod":
            continue  # the helm test pod runs to completion
        for c in spec["containers"]:
            ops = [p for p in c["ports"] if p["name"] == "ops"]
            assert ops and ops[0]["containerPort"] == 8001
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert c[probe]["httpGet"]["port"] in ("ops", 8001), f"{obj['metadata']['name']} {probe}"
            assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
            assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"


def test_broker_settings_reach_both_processes_as_contracted() -> None:
    docs = render_set("keda-on")
    for name in (f"{RELEASE}-worker", f"{RELEASE}-api"):
        spec = one(docs, "Deployment", name)["spec"]["template"]["spec"]
        c = spec["containers"][0]
        env = env_of(c)
        assert env["CPW_RABBITMQ_URL_FILE"] == "/var/run/secrets/controlplane-workers/rabbitmq/url"
        assert (
            env["CPW_RABBITMQ_MANAGEMENT_URL_FILE"] == "/var/run/secrets/controlplane-workers/rabbitmq/management-url"
        )
        assert env["CPW_WORKER_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["CPW_HEALTH_PORT"] == "8001"
        assert (env["CPW_JOBS_QUEUE"], env["CPW_EXCHANGE"], env["CPW_RESULTS_STREAM"]) == (
            "provider.jobs",
            "provider.exchange",
            "provider.results",
        )
        assert env["CPW_RESULTS_MAX_AGE"] == "24h" and env["CPW_QUEUE_TYPE"] in ("classic", "quorum")
        assert "command" not in c and "args" not in c, "the images' entrypoints run cpw worker / cpw api"
        mount = next(m for m in c["volumeMounts"] if m["name"] == "rabbitmq")
        assert mount["readOnly"] and mount["mountPath"] == "/var/run/secrets/controlplane-workers/rabbitmq"
    worker = env_of(one(docs, "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]["containers"][0])
    assert worker["CPW_PROVIDERS"] == "controlplane_workers.examples.demo:registry"
    for key in ("CPW_MAX_CONCURRENT_JOBS", "CPW_MAX_ATTEMPTS"):
        assert worker[key].isdigit()
    for key in ("CPW_JOB_TIMEOUT", "CPW_DRAIN_TIMEOUT"):
        float(worker[key])
    api = env_of(one(docs, "Deployment", f"{RELEASE}-api")["spec"]["template"]["spec"]["containers"][0])
    assert api["CPW_API_PORT"] == "8000"
    assert api["CPW_API_TOKENS_FILE"].startswith("/var/run/secrets/")
    for key in ("CPW_API_MAX_BODY_BYTES", "CPW_API_RETRY_AFTER", "CPW_API_TENANT_MAX_QUEUED", "CPW_API_TENANT_BURST"):
        assert api[key].isdigit()
    assert float(api["CPW_API_TENANT_RATE"]) == 100  # on by default: one tenant's flood cannot starve the others
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in api, "no tracing unless configured"


def test_management_url_file_only_when_the_secret_has_one() -> None:
    env = env_of(
        one(render_set("default"), "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]["containers"][0]
    )
    assert "CPW_RABBITMQ_MANAGEMENT_URL_FILE" not in env


def test_service_account_tokens_are_not_mounted_by_default() -> None:
    docs = render_set("default")
    for _obj, _meta, spec in pod_specs(docs):
        assert spec["automountServiceAccountToken"] is False
    for sa in [d for d in docs if d["kind"] == "ServiceAccount"]:
        assert sa["automountServiceAccountToken"] is False
    names = {spec["serviceAccountName"] for obj, _m, spec in pod_specs(docs) if obj["kind"] == "Deployment"}
    assert names == {f"{RELEASE}-worker", f"{RELEASE}-api"}, "dedicated ServiceAccounts"
    assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]


def _checksums(values: dict) -> dict[str, dict]:
    docs = render_values(values)
    return {o["metadata"]["name"]: m["annotations"] for o, m, _ in pod_specs(docs) if o["kind"] == "Deployment"}


def _with(url: str, tokens: dict, salt: str = "") -> dict:
    return {"global": {"checksumSalt": salt, "rabbitmq": {"url": url}}, "api": {"auth": {"tokens": tokens}}}


def test_changed_secret_sources_roll_the_pods() -> None:
    salted = "a-long-random-salt"
    base = _checksums(_with("amqp://a:b@h:5672/", {"t1": "x"}, salted))
    url = _checksums(_with("amqp://a:c@h:5672/", {"t1": "x"}, salted))
    tok = _checksums(_with("amqp://a:b@h:5672/", {"t2": "x"}, salted))
    host = _checksums(_with("amqp://a:b@other:5672/", {"t1": "x"}))  # unsalted: the rest of the source still counts
    for name in (f"{RELEASE}-worker", f"{RELEASE}-api"):
        assert base[name]["checksum/rabbitmq"] != url[name]["checksum/rabbitmq"]
        assert (
            _checksums(_with("amqp://a:b@h:5672/", {"t1": "x"}))[name]["checksum/rabbitmq"]
            != (host[name]["checksum/rabbitmq"])
        )
    assert base[f"{RELEASE}-api"]["checksum/api-tokens"] != tok[f"{RELEASE}-api"]["checksum/api-tokens"]


def test_checksum_annotations_give_pod_readers_nothing_to_test_guesses_against() -> None:
    # Issue 17, item 9: sha256(toJson(values)) of the broker values and tokens let anyone who reads pods test
    # guesses of the password offline. Unsalted, credentials are masked before hashing; salted, the salt is secret.
    import hashlib
    import json

    one_ = _checksums(_with("amqp://a:hunter2@h:5672/", {"tok-1": "team-a"}))
    two = _checksums(_with("amqp://a:letmein@h:5672/", {"tok-2": "team-a"}))
    for name in (f"{RELEASE}-worker", f"{RELEASE}-api"):
        assert one_[name] == two[name], "an unsalted checksum must not depend on a password or token"
    guess = json.dumps({"url": "amqp://a:hunter2@h:5672/"}, separators=(",", ":"))
    assert hashlib.sha256(guess.encode()).hexdigest() not in one_[f"{RELEASE}-worker"].values()
    salts = [_checksums(_with("amqp://a:hunter2@h:5672/", {"tok-1": "team-a"}, s)) for s in ("salt-1", "salt-2")]
    assert salts[0][f"{RELEASE}-worker"]["checksum/rabbitmq"] != salts[1][f"{RELEASE}-worker"]["checksum/rabbitmq"]


def test_hard_anti_affinity_and_spread_presets() -> None:
    docs = render_set("production")
    api = one(docs, "Deployment", f"{RELEASE}-api")["spec"]["template"]["spec"]
    req = api["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert req[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    default = one(render_set("default"), "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]
    assert default["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert default["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"
    hard = render_values({"workers": {"topologySpreadPreset": "hard"}})
    spec = one(hard, "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]
    assert spec["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "DoNotSchedule"


def test_the_dlq_bound_reaches_both_processes_and_parses() -> None:
    from controlplane_workers.settings import load_settings

    bound = {"global": {"broker": {"deadLetter": {"maxLength": 250000, "maxAge": 86400}}}}
    for values, expected in (({}, ("10000", "604800", "drop-head")), (bound, ("250000", "86400", "drop-head"))):
        docs = render_values(values)
        for name in (f"{RELEASE}-worker", f"{RELEASE}-api"):
            env = env_of(one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0])
            got = (env["CPW_DLQ_MAX_LENGTH"], env["CPW_DLQ_MAX_AGE"], env["CPW_DLQ_OVERFLOW"])
            assert got == expected, name
            settings = load_settings(dlq_max_length=got[0], dlq_max_age=got[1], dlq_overflow=got[2])
            assert (settings.dlq_max_length, settings.dlq_max_age) == (int(got[0]), int(got[1]))
