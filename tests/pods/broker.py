"""The broker a value set points at, made real on the test's RabbitMQ: its vhost, its accounts, its operator.

A value set names its broker in one of three ways (docs/chart.md, "RabbitMQ"): a Secret the installer
creates (tests/pods/secrets.py makes it), URLs in the values (the chart makes the Secret, so the user and
password written there must exist on the broker), or a RabbitmqCluster (the RabbitMQ cluster operator makes
the `<name>-default-user` Secret and that user). `BrokerSide` plays whoever makes each, and undoes it all.

The vhost of a value set is a fresh one, except when KEDA watches the queue: its trigger names
`global.rabbitmq.vhost` (default "/"), and the Secret made for the set uses that vhost, as an installer
following docs/chart.md would. A vhost used is deleted afterwards; the default one is then made again, empty.
"""

from __future__ import annotations

import re
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from tests.chart.chartlib import NAMESPACE, ROOT, VALUE_SETS
from tests.conftest import BrokerEndpoint
from tests.pods import kube

SECURITY_DOC = ROOT / "docs" / "security.md"


def documented_permissions() -> dict[str, str]:
    """The release user's permissions as docs/security.md ("Broker accounts") tells the installer to set them:
    read from its `rabbitmqctl set_permissions` line, so a wrong regex there fails the value sets using it."""
    text = SECURITY_DOC.read_text()
    command = text[text.index("rabbitmqctl set_permissions") :].split("```", 1)[0]
    configure, write, read = re.findall(r"'([^']*)'", command)[:3]
    return {"configure": configure, "write": write, "read": read}


ALL = {"configure": ".*", "write": ".*", "read": ".*"}
# The ports the cluster operator adds to the default-user Secret for enabled plugins (no TLS).
PLUGIN_PORTS = {
    "rabbitmq_mqtt": ("mqtt-port", "1883"),
    "rabbitmq_stomp": ("stomp-port", "61613"),
    "rabbitmq_stream": ("stream-port", "5552"),
    "rabbitmq_web_mqtt": ("web-mqtt-port", "15675"),
    "rabbitmq_web_stomp": ("web-stomp-port", "15674"),
}


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _ini(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass
class BrokerSide:
    """Vhosts and users made on the test's broker for one value set."""

    rabbitmq: BrokerEndpoint
    users: set[str] = field(default_factory=set)
    vhosts: set[str] = field(default_factory=set)

    @property
    def admin(self) -> str:
        return urllib.parse.urlsplit(self.rabbitmq.amqp_url).username or "guest"

    def _vhost(self, name: str) -> str:
        self.rabbitmq.request("PUT", f"/api/vhosts/{_q(name)}", {})
        self.rabbitmq.request("PUT", f"/api/permissions/{_q(name)}/{_q(self.admin)}", ALL)
        self.vhosts.add(name)
        return name

    def _user(self, name: str, password: str, tags: str, vhost: str, permissions: dict[str, str]) -> None:
        self.rabbitmq.request("PUT", f"/api/users/{_q(name)}", {"password": password, "tags": tags})
        self.users.add(name)
        self.rabbitmq.request("PUT", f"/api/permissions/{_q(self._vhost(vhost))}/{_q(name)}", permissions)

    def vhost_for(self, value_set: str, docs: list[dict[str, Any]]) -> str:
        """The vhost the installer's Secret names: the one KEDA watches when there is a ScaledObject, else fresh."""
        if not any(d["kind"] == "ScaledObject" for d in docs):
            name = self.rabbitmq.new_vhost()
            self.vhosts.add(name)
            return name
        rabbitmq = (VALUE_SETS.get(value_set, {}).get("global") or {}).get("rabbitmq") or {}
        return self._vhost(rabbitmq.get("vhost", "/"))

    def operator(self, docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, bytes]]:
        """What the RabbitMQ cluster operator makes for each RabbitmqCluster: its default user (administrator, all
        of vhost "/") and the `<name>-default-user` Secret with the keys it writes (cluster-operator
        internal/resource/default_user_secret.go; `connection_string` from its PR #1721)."""
        out: dict[tuple[str, str], dict[str, bytes]] = {}
        for cluster in (d for d in docs if d["kind"] == "RabbitmqCluster"):
            spec = cluster["spec"]
            assert not (spec.get("tls") or {}).get("secretName"), "a RabbitmqCluster with TLS is not modelled"
            name, namespace = cluster["metadata"]["name"], cluster["metadata"].get("namespace", NAMESPACE)
            rabbitmq = spec.get("rabbitmq") or {}
            conf = _ini(rabbitmq.get("additionalConfig", ""))  # default_user/default_pass there win (PR #1974)
            username = conf.get("default_user") or "default_user_" + secrets.token_urlsafe(24)[:19]
            password = conf.get("default_pass") or secrets.token_urlsafe(24)
            host = f"{name}.{namespace}.svc"
            data = {
                "username": username,
                "password": password,
                "default_user.conf": f"default_user = {username}\ndefault_pass = {password}\n",
                "provider": "rabbitmq",
                "type": "rabbitmq",
                "host": host,
                "port": "5672",
                "connection_string": f"amqp://{username}:{password}@{host}:5672/",
            }
            data.update(dict(PLUGIN_PORTS[p] for p in rabbitmq.get("additionalPlugins") or [] if p in PLUGIN_PORTS))
            self._user(username, password, "administrator", "/", ALL)
            out[("Secret", f"{name}-default-user")] = kube.secret(data)
        return out

    def accounts(self, objects: dict[tuple[str, str], dict[str, bytes]]) -> None:
        """The users the amqp URLs of the Secrets name (the chart's, from the values), made as docs/security.md
        makes them: the documented permissions on the URL's vhost, tag `monitoring` when a management URL of
        the Secrets uses the same user (KEDA reads queue depths with it)."""
        urls = [
            urllib.parse.urlsplit(raw.decode(errors="replace").strip())
            for (kind, _), data in objects.items()
            if kind == "Secret"
            for raw in data.values()
        ]
        monitoring = {u.username for u in urls if u.scheme in ("http", "https") and u.username}
        for url in urls:
            user = urllib.parse.unquote(url.username or "")
            if url.scheme not in ("amqp", "amqps") or not user or user == self.admin or user in self.users:
                continue
            vhost = urllib.parse.unquote(url.path[1:]) or "/"
            tags = "monitoring" if url.username in monitoring else ""
            self._user(user, urllib.parse.unquote(url.password or ""), tags, vhost, documented_permissions())

    def close(self) -> None:
        for user in self.users:
            self.rabbitmq.request("DELETE", f"/api/users/{_q(user)}")
        for vhost in sorted(self.vhosts):
            self.rabbitmq.delete_vhost(_q(vhost))
            if vhost == "/":
                self._vhost("/")
