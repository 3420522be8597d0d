"""What the kubelet derives from a pod spec alone: env, volume files, quantities, and which fields it read.

Pure functions over the rendered manifest and the test's Secrets/ConfigMaps, so the runner (runner.py) only
has to start processes. `not_understood()` is the guard of issue 18: a field this module does not model
fails the test instead of being silently ignored.
"""

from __future__ import annotations

import base64
import math
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

# Fields that only place the pod (scheduler, registry) and change nothing inside the container.
PLACEMENT = True
_PROBE = {
    "httpGet": {"path": True, "port": True, "scheme": True, "httpHeaders": True},
    "tcpSocket": {"port": True},
    "initialDelaySeconds": True,
    "periodSeconds": True,
    "timeoutSeconds": True,
    "failureThreshold": True,
    "successThreshold": True,
}
_KEY_TO_PATH = {"key": True, "path": True, "mode": True}
_FIELD_REF = {"fieldPath": True, "apiVersion": True}
_RESOURCE_REF = {"resource": True, "containerName": True, "divisor": True}
_DOWNWARD_ITEMS = {"path": True, "fieldRef": _FIELD_REF, "resourceFieldRef": _RESOURCE_REF, "mode": True}
_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": True,
    "runAsGroup": True,
    "allowPrivilegeEscalation": True,  # bwrap always sets no_new_privs
    "privileged": True,  # must be false: checked by the runner
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": True},  # the sandboxed uid holds no capabilities at all
    "seccompProfile": {"type": True},
}
CONTAINER: dict[str, Any] = {
    "name": True,
    "image": True,
    "imagePullPolicy": PLACEMENT,
    "command": True,
    "args": True,
    "workingDir": True,
    "env": {
        "name": True,
        "value": True,
        "valueFrom": {
            "secretKeyRef": {"name": True, "key": True, "optional": True},
            "configMapKeyRef": {"name": True, "key": True, "optional": True},
            "fieldRef": _FIELD_REF,
            "resourceFieldRef": _RESOURCE_REF,
        },
    },
    "envFrom": {
        "prefix": True,
        "secretRef": {"name": True, "optional": True},
        "configMapRef": {"name": True, "optional": True},
    },
    "ports": {"name": True, "containerPort": True, "protocol": True},
    "securityContext": _SECURITY,
    "resources": {"limits": True, "requests": True},
    "startupProbe": _PROBE,
    "readinessProbe": _PROBE,
    "livenessProbe": _PROBE,
    "lifecycle": {"preStop": {"exec": {"command": True}}},
    "volumeMounts": {"name": True, "mountPath": True, "readOnly": True, "subPath": True},
}
POD: dict[str, Any] = {
    "containers": CONTAINER,
    "volumes": {
        "name": True,
        "emptyDir": {"sizeLimit": True, "medium": True},
        "secret": {"secretName": True, "items": _KEY_TO_PATH, "defaultMode": True, "optional": True},
        "configMap": {"name": True, "items": _KEY_TO_PATH, "defaultMode": True, "optional": True},
        "downwardAPI": {"items": _DOWNWARD_ITEMS, "defaultMode": True},
        "projected": {
            "defaultMode": True,
            "sources": {
                "secret": {"name": True, "items": _KEY_TO_PATH, "optional": True},
                "configMap": {"name": True, "items": _KEY_TO_PATH, "optional": True},
                "downwardAPI": {"items": _DOWNWARD_ITEMS},
            },
        },
    },
    "securityContext": {**_SECURITY, "fsGroup": True, "fsGroupChangePolicy": True, "supplementalGroups": True},
    "terminationGracePeriodSeconds": True,
    "activeDeadlineSeconds": True,
    "restartPolicy": True,
    "serviceAccountName": True,
    "automountServiceAccountToken": True,  # true: service_account_files() at SERVICE_ACCOUNT_DIR
    "enableServiceLinks": True,  # must be false: no *_SERVICE_HOST variables are made (checked below)
    "affinity": PLACEMENT,
    "topologySpreadConstraints": PLACEMENT,
    "nodeSelector": PLACEMENT,
    "tolerations": PLACEMENT,
    "priorityClassName": PLACEMENT,
    "imagePullSecrets": PLACEMENT,
}


def not_understood(spec: dict[str, Any], allowed: dict[str, Any] = POD, where: str = "spec") -> list[str]:
    """Paths of fields the runner does not model (a new chart feature must be taught to it first)."""
    out: list[str] = []
    items = spec if isinstance(spec, list) else [spec]
    for index, item in enumerate(items):
        here = f"{where}[{index}]" if isinstance(spec, list) else where
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            rule = allowed.get(key)
            if rule is None:
                out.append(f"{here}.{key}")
            elif isinstance(rule, dict):
                out.extend(not_understood(value, rule, f"{here}.{key}"))
    if where == "spec" and isinstance(spec, dict):
        if len(spec.get("containers", [])) != 1:
            out.append(f"spec.containers ({len(spec.get('containers', []))} containers: the runner runs one per pod)")
        if spec.get("enableServiceLinks", True) is not False:
            out.append("spec.enableServiceLinks (not false)")
        for container in spec.get("containers", []):
            context = container.get("securityContext", {})
            if context.get("privileged") or context.get("readOnlyRootFilesystem") is not True:
                out.append(f"spec.containers[{container['name']}].securityContext (privileged or writable root)")
    return out


_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource.Quantity ("256Mi", "500m", "1e3") as a number."""
    text = str(value)
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", text)
    assert match and (match[2] in _SUFFIXES or not match[2]), f"not a quantity: {value!r}"
    return Decimal(match[1]) * Decimal(_SUFFIXES.get(match[2], 1))


@dataclass
class Pod:
    """A pod the runner will start: identity for the downward API, and the objects it may read."""

    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]
    objects: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)
    pod_ip: str = "127.0.0.1"
    node_name: str = "pods-runner"

    def data(self, kind: str, name: str, optional: bool = False) -> dict[str, bytes] | None:
        found = self.objects.get((kind, name))
        assert found is not None or optional, f"pod {self.name} needs {kind} {name}, which does not exist"
        return found

    def field_ref(self, path: str) -> str:
        simple = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": f"uid-{self.name}",
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": "127.0.0.1",
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        assert match, f"fieldRef {path} is not supported by Kubernetes"
        return (self.labels if match[1] == "labels" else self.annotations).get(match[2], "")

    def resource_ref(self, ref: dict[str, Any], container: dict[str, Any]) -> str:
        if ref.get("containerName"):
            container = next(c for c in self.spec["containers"] if c["name"] == ref["containerName"])
        section, _, resource = ref["resource"].partition(".")
        value = (container.get("resources", {}).get(section) or {}).get(resource)
        if value is None and section == "requests":
            value = (container.get("resources", {}).get("limits") or {}).get(resource)
        assert value is not None, (
            f"{ref['resource']} of {container['name']} is unset: the node's capacity would leak in"
        )
        divisor = quantity(ref.get("divisor", "1"))
        return str(math.ceil(quantity(value) / divisor))


def secret(data: dict[str, str]) -> dict[str, bytes]:
    """A Secret as the API server stores it (its `stringData` turned into bytes)."""
    return {k: v.encode() for k, v in data.items()}


def from_manifest(doc: dict[str, Any]) -> dict[str, bytes]:
    """The data of a rendered Secret or ConfigMap."""
    out = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()} if doc["kind"] == "Secret" else {}
    if doc["kind"] == "ConfigMap":
        out = {k: str(v).encode() for k, v in (doc.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (doc.get("binaryData") or {}).items()})
    out.update({k: str(v).encode() for k, v in (doc.get("stringData") or {}).items()})
    return out


_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, undefined ones kept, `$$` escapes."""

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])

    return _REF.sub(one, text)


def container_env(pod: Pod, container: dict[str, Any], image_env: dict[str, str]) -> dict[str, str]:
    """The process environment: image ENV, then envFrom, then env (each entry may use the ones before it)."""
    env = dict(image_env)
    env["HOSTNAME"] = pod.name
    declared: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = ("Secret", source["secretRef"]) if "secretRef" in source else ("ConfigMap", source["configMapRef"])
        data = pod.data(kind, ref["name"], ref.get("optional", False)) or {}
        declared.update({source.get("prefix", "") + k: v.decode() for k, v in data.items()})
    for item in container.get("env", []):
        if "valueFrom" not in item:
            declared[item["name"]] = expand(str(item.get("value", "")), declared)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            declared[item["name"]] = pod.field_ref(source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            declared[item["name"]] = pod.resource_ref(source["resourceFieldRef"], container)
        else:
            kind, ref = ("Secret", source["secretKeyRef"]) if "secretKeyRef" in source else (
                "ConfigMap", source["configMapKeyRef"])  # fmt: skip
            data = pod.data(kind, ref["name"], ref.get("optional", False))
            if data is None or ref["key"] not in data:
                assert ref.get("optional"), f"{kind} {ref['name']} has no key {ref['key']}"
                continue
            declared[item["name"]] = data[ref["key"]].decode()
    env.update(declared)
    return env


def _write(root: Path, relpath: str, content: bytes, mode: int) -> None:
    assert not os.path.isabs(relpath) and ".." not in relpath.split("/"), f"bad volume path {relpath}"
    target = root / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    target.chmod(mode)


def _key_files(root: Path, data: dict[str, bytes] | None, items: list[dict] | None, mode: int, what: str) -> None:
    if data is None:
        return
    if not items:
        for key, value in data.items():
            _write(root, key, value, mode)
        return
    for item in items:
        assert item["key"] in data, f"{what} has no key {item['key']}"
        _write(root, item["path"], data[item["key"]], item.get("mode", mode))


def _downward_files(root: Path, pod: Pod, items: list[dict], mode: int) -> None:
    for item in items:
        if "fieldRef" in item:
            value = pod.field_ref(item["fieldRef"]["fieldPath"])
        else:
            ref = item["resourceFieldRef"]
            container = next(c for c in pod.spec["containers"] if c["name"] == ref["containerName"])
            value = pod.resource_ref(ref, container)
        _write(root, item["path"], value.encode(), item.get("mode", mode))


def materialize(pod: Pod, volume: dict[str, Any], root: Path) -> None:
    """Write a Secret, ConfigMap, downward API or projected volume's files under `root`, as the kubelet does."""
    root.mkdir(parents=True, exist_ok=True)
    if "secret" in volume:
        source = volume["secret"]
        data = pod.data("Secret", source["secretName"], source.get("optional", False))
        _key_files(root, data, source.get("items"), source.get("defaultMode", 0o644), source["secretName"])
    elif "configMap" in volume:
        source = volume["configMap"]
        data = pod.data("ConfigMap", source["name"], source.get("optional", False))
        _key_files(root, data, source.get("items"), source.get("defaultMode", 0o644), source["name"])
    elif "downwardAPI" in volume:
        source = volume["downwardAPI"]
        _downward_files(root, pod, source["items"], source.get("defaultMode", 0o644))
    elif "projected" in volume:
        mode = volume["projected"].get("defaultMode", 0o644)
        for part in volume["projected"]["sources"]:
            if "secret" in part:
                ref = part["secret"]
                data = pod.data("Secret", ref["name"], ref.get("optional", False))
                _key_files(root, data, ref.get("items"), mode, ref["name"])
            elif "configMap" in part:
                ref = part["configMap"]
                data = pod.data("ConfigMap", ref["name"], ref.get("optional", False))
                _key_files(root, data, ref.get("items"), mode, ref["name"])
            else:
                _downward_files(root, pod, part["downwardAPI"]["items"], mode)
    else:
        raise AssertionError(f"volume {volume['name']}: not a file volume")


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def service_account_files(pod: Pod, root: Path) -> bool:
    """The token volume the kubelet projects unless automountServiceAccountToken is false (no API server here:
    the token is a placeholder, which is all a pod that never calls the API can tell)."""
    if pod.spec.get("automountServiceAccountToken", True) is False:
        return False
    for name, content in (("token", b"pods-runner-token"), ("ca.crt", b""), ("namespace", pod.namespace.encode())):
        _write(root, name, content, 0o644)
    return True


def named_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")
