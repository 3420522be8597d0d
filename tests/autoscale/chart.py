"""From chart values to what KEDA and the worker pods would get: the rendered ScaledObject (as the model's
spec), the management URL KEDA reads through the TriggerAuthentication, and the worker container's
settings."""

from __future__ import annotations

import copy
import urllib.parse
from dataclasses import dataclass
from typing import Any

from tests.autoscale.model import ScaledObjectSpec
from tests.chart.chartlib import render_values

# Env the drill takes from the rendered worker container. The broker URLs come as files in a pod; the drill's
# processes get the same URLs as env instead (CPW_RABBITMQ_URL), and their own ops port and worker id.
WORKER_SETTINGS = (
    "CPW_MAX_CONCURRENT_JOBS",
    "CPW_DRAIN_TIMEOUT",
    "CPW_JOB_TIMEOUT",
    "CPW_MAX_ATTEMPTS",
    "CPW_JOBS_QUEUE",
    "CPW_EXCHANGE",
    "CPW_RESULTS_STREAM",
    "CPW_QUEUE_TYPE",
)


@dataclass
class Rendered:
    values: dict[str, Any]
    scaled_object: dict[str, Any]
    spec: ScaledObjectSpec
    management_url: str  # the `host` KEDA reads from the broker Secret
    amqp_url: str
    worker_env: dict[str, str]
    termination_grace_seconds: int


def autoscaling_values(amqp_url: str, management_url: str, autoscaling: dict[str, Any], **workers: Any) -> dict:
    """Umbrella values with KEDA on and a chart-made broker Secret holding both URLs."""
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(amqp_url).path.lstrip("/")) or "/"
    return {
        "global": {"rabbitmq": {"url": amqp_url, "managementUrl": management_url, "vhost": vhost}},
        "workers": {**workers, "autoscaling": {"enabled": True, **autoscaling}},
    }


def render(values: dict[str, Any], **model_options: Any) -> Rendered:
    docs = render_values(copy.deepcopy(values))
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    scaled = _one(by_kind, "ScaledObject")
    target = scaled["spec"]["scaleTargetRef"]["name"]
    deployment = next(d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == target)
    if "replicas" in deployment["spec"]:
        raise AssertionError("the worker Deployment sets replicas although KEDA owns them")
    auth_name = scaled["spec"]["triggers"][0]["authenticationRef"]["name"]
    auth = next(d for d in by_kind.get("TriggerAuthentication", []) if d["metadata"]["name"] == auth_name)
    params = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    secret_name, host_key = params["host"]
    secret = next(d for d in by_kind.get("Secret", []) if d["metadata"]["name"] == secret_name)
    data = secret.get("stringData") or {}
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    return Rendered(
        values=values,
        scaled_object={k: v for k, v in scaled.items() if k != "__template"},
        spec=ScaledObjectSpec.from_manifest(scaled, **model_options),
        management_url=data[host_key],
        amqp_url=data["url"],
        worker_env={k: env[k] for k in WORKER_SETTINGS if k in env},
        termination_grace_seconds=int(pod["terminationGracePeriodSeconds"]),
    )


def _one(by_kind: dict[str, list[dict]], kind: str) -> dict:
    found = by_kind.get(kind, [])
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
