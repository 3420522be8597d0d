"""Generates the charts' values.schema.json files from one description.

The worker and api-adapter subcharts share most of their pod-level values; writing their schemas from the
same Python fragments keeps them from drifting. `python tests/chart/schema_gen.py` rewrites the three files;
tests/chart/test_schema.py fails when a committed schema differs from what this script produces.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "controlplane-workers"
SCHEMA_FILES = {
    "umbrella": CHART / "values.schema.json",
    "worker": CHART / "charts" / "worker" / "values.schema.json",
    "api-adapter": CHART / "charts" / "api-adapter" / "values.schema.json",
}

DRAFT = "http://json-schema.org/draft-07/schema#"


def obj(props: dict[str, Any], *, strict: bool = True, required: list[str] | None = None, **kw: Any) -> dict:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if strict:
        out["additionalProperties"] = False
    if required:
        out["required"] = required
    out.update(kw)
    return out


def s(desc: str = "", **kw: Any) -> dict:
    return {"type": "string", **({"description": desc} if desc else {}), **kw}


def i(desc: str = "", minimum: int | None = 0, **kw: Any) -> dict:
    out: dict[str, Any] = {"type": "integer", **kw}
    if minimum is not None:
        out["minimum"] = minimum
    if desc:
        out["description"] = desc
    return out


def num(desc: str = "", **kw: Any) -> dict:
    return {"type": "number", **({"description": desc} if desc else {}), **kw}


B = {"type": "boolean"}
MAP_STR = {"type": "object", "additionalProperties": {"type": "string"}}
ANY_OBJ = {"type": "object"}
ANY_LIST = {"type": "array"}
QUANTITY = {"type": ["string", "number"]}
INT_OR_PERCENT = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^[0-9]+%$"}]}

IMAGE = obj(
    {
        "repository": s("image repository", minLength=1),
        "tag": {"type": ["string", "number"], "description": "tag; default appVersion"},
        "digest": s("sha256 digest", pattern="^(sha256:[a-f0-9]{64})?$"),
        "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    },
    required=["repository"],
)

PULL_SECRETS = {
    "type": "array",
    "items": {"anyOf": [{"type": "string", "minLength": 1}, obj({"name": s(minLength=1)}, required=["name"])]},
}

RESOURCE_LIST = {
    "type": "object",
    "properties": {"cpu": QUANTITY, "memory": QUANTITY},
    "required": ["cpu", "memory"],
    "additionalProperties": QUANTITY,
}
RESOURCES = obj(
    {"requests": RESOURCE_LIST, "limits": RESOURCE_LIST},
    required=["requests", "limits"],
    description="requests and limits are both required (cpu and memory)",
)

PROBE = obj({"periodSeconds": i(minimum=1), "timeoutSeconds": i(minimum=1), "failureThreshold": i(minimum=1)})

ENV_VAR = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": s(minLength=1)},
    "not": {
        "properties": {"valueFrom": {"required": ["secretKeyRef"]}},
        "required": ["valueFrom"],
    },
    "description": "credentials are mounted as files, never env from a Secret (valueFrom.secretKeyRef is refused)",
}


def component(extra: dict[str, Any], autoscaling: dict) -> dict:
    props: dict[str, Any] = {
        "global": ANY_OBJ,
        "common-lib": ANY_OBJ,
        "enabled": B,
        "replicaCount": i("pods when autoscaling is off"),
        "image": IMAGE,
        "imagePullSecrets": PULL_SECRETS,
        "logLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
        "resources": RESOURCES,
        "podDisruptionBudget": obj(
            {
                "enabled": B,
                "minAvailable": {"oneOf": [{"type": "null"}, *INT_OR_PERCENT["oneOf"]]},
                "maxUnavailable": INT_OR_PERCENT,
            }
        ),
        "autoscaling": autoscaling,
        "affinity": ANY_OBJ,
        "podAntiAffinityPreset": {"enum": ["soft", "hard", "none"]},
        "topologySpreadConstraints": {"type": "array", "items": ANY_OBJ},
        "topologySpreadPreset": {"enum": ["soft", "hard", "none"]},
        "nodeSelector": MAP_STR,
        "tolerations": {"type": "array", "items": ANY_OBJ},
        "priorityClassName": s(),
        "podAnnotations": MAP_STR,
        "podLabels": MAP_STR,
        "extraEnv": {"type": "array", "items": ENV_VAR},
        "extraVolumes": {"type": "array", "items": obj({"name": s(minLength=1)}, strict=False, required=["name"])},
        "extraVolumeMounts": {
            "type": "array",
            "items": obj(
                {"name": s(minLength=1), "mountPath": s(minLength=1)}, strict=False, required=["name", "mountPath"]
            ),
        },
        "podSecurityContext": obj(
            {
                "runAsUser": i("non-root UID, >= 10000", minimum=10000),
                "runAsGroup": i("GID, >= 10000", minimum=10000),
                "fsGroup": i("fsGroup, >= 10000", minimum=10000),
            },
            required=["runAsUser", "runAsGroup", "fsGroup"],
        ),
        "tmpVolume": obj({"sizeLimit": QUANTITY, "medium": {"enum": ["", "Memory"]}}),
        "probes": obj(
            {"startup": PROBE, "liveness": PROBE, "readiness": PROBE}, required=["startup", "liveness", "readiness"]
        ),
        "serviceAccount": obj({"create": B, "name": s(), "annotations": MAP_STR, "automountToken": B}),
        "rbac": obj({"create": B, "clusterScoped": B, "rules": {"type": "array", "items": ANY_OBJ}}),
    }
    props.update(extra)
    return {"$schema": DRAFT, **obj(props)}


def worker_schema() -> dict:
    behavior = ANY_OBJ
    autoscaling = obj(
        {
            "enabled": B,
            "minReplicas": i("0 allows scale to zero"),
            "maxReplicas": i(minimum=1),
            "jobsPerReplica": {"type": ["integer", "null"], "minimum": 1},
            "activationValue": {"type": "number", "minimum": 0},
            "pollingInterval": i(minimum=1),
            "cooldownPeriod": i(),
            "targetCPUUtilizationPercentage": {"type": ["integer", "null"], "minimum": 1, "maximum": 100},
            "fallback": obj(
                {
                    "enabled": B,
                    "failureThreshold": i(minimum=1),
                    "replicas": {"type": ["integer", "null"], "minimum": 1},
                }
            ),
            "behavior": behavior,
        }
    )
    return component(
        {
            "maxConcurrentJobs": i("jobs one worker runs at once", minimum=1),
            "maxAttempts": i(minimum=1),
            "jobTimeout": num("seconds", exclusiveMinimum=0),
            "syncThreads": {"type": ["integer", "null"], "minimum": 1},
            "maxResultBytes": i("largest result a provider may return, bytes of JSON", minimum=1024),
            "drainTimeout": num("seconds", minimum=0),
            "terminationGraceMarginSeconds": i(),
            "providers": s("module:attribute", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"),
            "role": {"type": ["string", "null"], "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"},
        },
        autoscaling,
    )


# The projector's pod keys (charts/api-adapter/templates/projector.yaml); the others are the API's.
_POD = component({}, ANY_OBJ)["properties"]
PROJECTOR = obj(
    {
        "replicaCount": i("pods: one writes, the rest stand by", minimum=1),
        "batchMessages": i("stream messages per transaction", minimum=1),
        "backlogMessages": i("stream messages held received and not yet committed", minimum=1),
        "retentionDays": i("days a job's row is kept", minimum=1, maximum=3650),
        **{
            key: _POD[key]
            for key in (
                "resources",
                "podDisruptionBudget",
                "affinity",
                "podAntiAffinityPreset",
                "topologySpreadConstraints",
                "topologySpreadPreset",
                "nodeSelector",
                "tolerations",
                "priorityClassName",
                "podAnnotations",
                "podLabels",
                "extraEnv",
            )
        },
        "serviceAccount": obj({"create": B, "name": s(), "annotations": MAP_STR}),
    }
)


def api_schema() -> dict:
    autoscaling = obj(
        {
            "enabled": B,
            "minReplicas": i(minimum=1),
            "maxReplicas": i(minimum=1),
            "targetCPUUtilizationPercentage": i(minimum=1, maximum=100),
        }
    )
    return component(
        {
            "service": obj(
                {
                    "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                    "port": i(minimum=1, maximum=65535),
                    "annotations": MAP_STR,
                }
            ),
            "auth": obj(
                {
                    "existingSecret": s(),
                    "existingSecretKey": s(minLength=1),
                    "tokens": MAP_STR,
                    "testTokenKey": s(minLength=1),
                }
            ),
            "maxBodyBytes": i(minimum=1),
            "retryAfter": i(minimum=1),
            "syncTimeout": num(exclusiveMinimum=0, maximum=300),
            "tenantMaxQueued": i(minimum=1),
            "tenantRate": num(minimum=0),
            "tenantBurst": i(minimum=1),
            "maxWait": num(minimum=0),
            "preStopSleepSeconds": i(maximum=120),
            "terminationGraceMarginSeconds": i(),
            "terminationGracePeriodSeconds": {"oneOf": [{"type": "null"}, i()]},
            "projector": PROJECTOR,
        },
        autoscaling,
    )


# A classic jobs queue lives on one node: on a multi-node operator cluster its jobs wait for that node, or are
# lost with its disk (docs/reliability.md). Refused unless global.broker.allowClassicQueueOnCluster says so.
CLASSIC_QUEUE_ON_A_CLUSTER = {
    "if": {
        "properties": {
            "rabbitmq": {
                "properties": {
                    "cluster": {
                        "properties": {"enabled": {"const": True}, "replicas": {"minimum": 2}},
                        "required": ["enabled", "replicas"],
                    }
                },
                "required": ["cluster"],
            },
            "broker": {"properties": {"queueType": {"const": "classic"}}, "required": ["queueType"]},
        },
        "required": ["rabbitmq", "broker"],
    },
    "then": {
        "properties": {
            "broker": {
                "properties": {
                    "allowClassicQueueOnCluster": {
                        "const": True,
                        "description": "queueType classic on a multi-node operator cluster needs "
                        "allowClassicQueueOnCluster: true (use quorum: a classic queue lives on one node)",
                    }
                },
                "required": ["allowClassicQueueOnCluster"],
            }
        }
    },
}


# The PostgreSQL store needs its DSN: an existing Secret or the chart's CloudNativePG Cluster (the templates fail
# with the same words: cpw.lib.postgresql.validate).
POSTGRESQL_STORE_NEEDS_A_DSN = {
    "if": {
        "properties": {"operationStore": {"properties": {"type": {"const": "postgresql"}}, "required": ["type"]}},
        "required": ["operationStore"],
    },
    "then": {
        "properties": {
            "postgresql": {
                "anyOf": [
                    {"properties": {"existingSecret": {"minLength": 1}}, "required": ["existingSecret"]},
                    {
                        "properties": {
                            "cluster": {"properties": {"enabled": {"const": True}}, "required": ["enabled"]}
                        },
                        "required": ["cluster"],
                    },
                ],
                "description": "operationStore.type postgresql needs postgresql.existingSecret (the DSN) or "
                "postgresql.cluster.enabled (a CloudNativePG Cluster)",
            }
        },
        "required": ["postgresql"],
    },
}


def umbrella_schema() -> dict:
    peers = {"type": "array", "items": ANY_OBJ}
    rabbitmq = obj(
        {
            "url": s("amqp(s) URL", pattern="^(amqps?://.+)?$"),
            "managementUrl": s("http(s) management URL", pattern="^(https?://.+)?$"),
            "existingSecret": s(),
            "existingSecretKeys": obj({"url": s(minLength=1), "managementUrl": s()}),
            "vhost": s(minLength=1),
            "cluster": obj(
                {
                    "enabled": B,
                    "name": s(pattern="^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", maxLength=52),
                    "replicas": i(minimum=1),
                    "image": s(),
                    "resources": RESOURCES,
                    "persistence": obj({"storageClassName": s(), "storage": QUANTITY}),
                    "additionalPlugins": {"type": "array", "items": s()},
                    "additionalConfig": s(),
                    "extraSpec": ANY_OBJ,
                }
            ),
        }
    )
    glob = obj(
        {
            "fullnameOverride": s(pattern="^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"),
            "imageRegistry": s(),
            "imagePullSecrets": PULL_SECRETS,
            "commonLabels": MAP_STR,
            "priorityClassName": s(),
            "checksumSalt": s(),
            "rabbitmq": rabbitmq,
            "broker": obj(
                {
                    "jobsQueue": s(minLength=1),
                    "exchange": s(minLength=1),
                    "deadLetter": obj(
                        {
                            "maxLength": i(minimum=1),
                            "maxAge": i("seconds", minimum=1),
                            "overflow": {"enum": ["drop-head", "reject-publish"]},
                        }
                    ),
                    "resultsStream": s(minLength=1),
                    "resultsMaxAge": s(pattern="^[0-9]+[YMDhms]$"),
                    "jobMaxDelay": {"type": "number", "exclusiveMinimum": 0, "maximum": 1073741.823},
                    "queueType": {"enum": ["auto", "classic", "quorum"]},
                    "allowClassicQueueOnCluster": B,
                    "deliveryLimit": i(minimum=1),
                    "streamReplicas": {"anyOf": [{"const": "auto"}, i(minimum=0)]},
                }
            ),
            "operationStore": obj({"type": {"enum": ["stream", "postgresql"]}}),
            "postgresql": obj(
                {
                    "existingSecret": s(),
                    "existingSecretKey": s(minLength=1),
                    "cluster": obj(
                        {
                            "enabled": B,
                            "name": s(pattern="^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", maxLength=50),
                            "instances": i(minimum=1),
                            "imageName": s(),
                            "storageSize": QUANTITY,
                            "storageClass": s(),
                            "resources": RESOURCES,
                            "extraSpec": ANY_OBJ,
                        }
                    ),
                }
            ),
            "tracing": obj(
                {
                    "otlpEndpoint": s(pattern="^(https?://.+)?$"),
                    "protocol": {"enum": ["grpc", "http/protobuf", "http/json"]},
                    "samplerRatio": {"type": "number", "minimum": 0, "maximum": 1},
                }
            ),
        }
    )
    glob["allOf"] = [CLASSIC_QUEUE_ON_A_CLUSTER, POSTGRESQL_STORE_NEEDS_A_DSN]
    monitor = obj({"enabled": B, "interval": s(), "scrapeTimeout": s(), "labels": MAP_STR})
    props = {
        "global": glob,
        "workers": {"type": "object", "description": "the worker subchart (its own schema checks the keys)"},
        "api": {"type": "object", "description": "the api-adapter subchart (its own schema checks the keys)"},
        "common-lib": ANY_OBJ,
        "networkPolicy": obj(
            {
                "enabled": B,
                "api": obj({"from": peers}),
                "metrics": obj({"from": peers}),
                "egress": obj(
                    {
                        "dns": obj({"to": peers, "anyDestination": B}),
                        "rabbitmq": obj(
                            {
                                "ports": {"type": "array", "items": i(minimum=1, maximum=65535)},
                                "to": peers,
                                "anyDestination": B,
                            }
                        ),
                        "postgresql": obj(
                            {
                                "ports": {"type": "array", "items": i(minimum=1, maximum=65535)},
                                "to": peers,
                                "anyDestination": B,
                            }
                        ),
                        "otlp": obj({"to": peers, "anyDestination": B}),
                        "kubernetesApi": obj(
                            {
                                "cidrs": {"type": "array", "items": s()},
                                "ports": {"type": "array", "items": i(minimum=1, maximum=65535)},
                            }
                        ),
                        "workersExtra": peers,
                        "apiExtra": peers,
                    }
                ),
            }
        ),
        "monitoring": obj(
            {
                "podMonitor": monitor,
                "serviceMonitor": copy.deepcopy(monitor),
                "prometheusRule": obj({"enabled": B, "labels": MAP_STR}),
                "dashboards": obj({"enabled": B, "labels": MAP_STR, "annotations": MAP_STR}),
            }
        ),
        "tests": obj(
            {
                "enabled": B,
                "image": obj(
                    {
                        "repository": s(),
                        "tag": {"type": ["string", "number"]},
                        "digest": s(pattern="^(sha256:[a-f0-9]{64})?$"),
                    }
                ),
                "args": {"type": "array", "items": s(), "minItems": 1},
                "activeDeadlineSeconds": i(minimum=1),
                "resources": RESOURCES,
            }
        ),
    }
    return {"$schema": DRAFT, **obj(props)}


def render_all() -> dict[str, str]:
    schemas = {"umbrella": umbrella_schema(), "worker": worker_schema(), "api-adapter": api_schema()}
    return {k: json.dumps(v, indent=2) + "\n" for k, v in schemas.items()}


def main() -> int:
    for key, text in render_all().items():
        SCHEMA_FILES[key].write_text(text)
        print(f"wrote {SCHEMA_FILES[key].relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
