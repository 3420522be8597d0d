"""Bearer tokens mapped to callers, from `CPW_API_TOKENS_FILE` (JSON or YAML).

Each entry is `token: tenant` (the tenant may name any subscription) or
`token: {tenant: NAME, subscriptions: [ID, ...]}` (only those subscriptions; ids compared without
case, as ARM compares GUIDs). `role: operator` in the mapping form makes the token an operator's:
it may also use the dead-letter routes (which see every tenant's failed jobs); with a role,
`subscriptions` may be left out (any subscription). The presented token is hashed and looked up by its SHA-256, then
compared with `hmac.compare_digest`, so the time taken does not depend on how much of a token
matched. The file is read again when it changes (a rotated Kubernetes Secret), at most every
`recheck` seconds; a change that cannot be read keeps the previous tokens, and is logged and counted.
No message here ever holds a token: entries are named by their position and tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from . import metrics

log = logging.getLogger("controlplane_api.auth")


class TokenFileError(Exception):
    pass


@dataclass(frozen=True)
class Caller:
    """Who is asking: the tenant and, when its token is scoped, the subscriptions it holds."""

    tenant: str | None
    subscriptions: frozenset[str] | None = None  # lower case; None: any subscription
    operator: bool = False  # may read, redrive and discard every tenant's dead letters

    def holds(self, subscription_id: str) -> bool:
        """Whether this caller may name `subscription_id` (empty: the request names none)."""
        return self.subscriptions is None or not subscription_id or subscription_id.lower() in self.subscriptions


ANONYMOUS = Caller(None)
ROLES = ("tenant", "operator")


def _caller(value: object, where: str) -> Caller:
    """One entry's value: a tenant name, or {tenant, subscriptions, role}. `where` names the entry."""
    if isinstance(value, str):
        if not value:
            raise TokenFileError(f"{where}: the tenant is empty")
        return Caller(value)
    if not isinstance(value, dict):
        raise TokenFileError(f"{where}: must be a tenant name or a mapping {{tenant, subscriptions, role}}")
    tenant, subscriptions, role = value.get("tenant"), value.get("subscriptions"), value.get("role")
    if not isinstance(tenant, str) or not tenant:
        raise TokenFileError(f"{where}: 'tenant' must be a non-empty string")
    where = f"{where} (tenant {tenant!r})"
    unknown = sorted(str(k) for k in value if k not in ("tenant", "subscriptions", "role"))
    if unknown:
        raise TokenFileError(f"{where}: unknown keys {unknown}; only 'tenant', 'subscriptions' and 'role' are read")
    if role is not None and role not in ROLES:
        raise TokenFileError(f"{where}: 'role' must be one of {list(ROLES)}")
    if subscriptions is None and role is not None:
        return Caller(tenant, None, role == "operator")
    if not isinstance(subscriptions, list) or not all(isinstance(s, str) and s for s in subscriptions):
        raise TokenFileError(f"{where}: 'subscriptions' must be a list of subscription id strings")
    return Caller(tenant, frozenset(s.lower() for s in subscriptions), role == "operator")


def load_tokens(path: Path) -> dict[str, Caller]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise TokenFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = orjson.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise TokenFileError(f"{path} is neither a JSON nor a YAML mapping: {type(exc).__name__}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TokenFileError(f"{path} must map tokens to tenants")
    tokens = {}
    for number, (token, value) in enumerate(data.items(), 1):
        where = f"{path}: entry {number}"
        if not isinstance(token, str) or not token:
            raise TokenFileError(f"{where}: the token must be a non-empty string")
        tokens[token] = _caller(value, where)
    return tokens


class TokenAuth:
    """token -> Caller; `caller_for(authorization header)` is None when the token is unknown."""

    def __init__(self, path: Path, recheck: float = 5.0) -> None:
        self.path = path
        self.recheck = recheck
        self._by_hash: dict[bytes, tuple[bytes, Caller]] = {}
        self._mtime = 0.0
        self._checked = 0.0
        self._failing: str | None = None  # the last reload error, logged once until it changes
        self._load()

    def _load(self) -> None:
        tokens = load_tokens(self.path)
        self._by_hash = {hashlib.sha256(t.encode()).digest(): (t.encode(), c) for t, c in tokens.items()}
        self._mtime = os.stat(self.path).st_mtime
        self._checked = time.monotonic()

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.recheck:
            return
        self._checked = now
        try:
            if os.stat(self.path).st_mtime == self._mtime:
                return
            self._load()
        except (OSError, TokenFileError) as exc:
            self._reload_failed(exc)
            return
        if self._failing is not None:
            log.warning("token file %s read again after failures: the new tokens are in use", self.path)
            self._failing = None

    def _reload_failed(self, exc: Exception) -> None:
        """Keep the tokens we have (a half-written Secret must not lock everyone out), but say so: a
        revoked token keeps working until the file is fixed. Counted on every try, logged once."""
        metrics.TOKEN_RELOAD_FAILURES.inc()
        message = str(exc) if isinstance(exc, TokenFileError) else f"cannot read {self.path}: {type(exc).__name__}"
        if message != self._failing:
            log.error("token file changed but cannot be used, the previous tokens stay in force: %s", message)
            self._failing = message

    @property
    def tenants(self) -> set[str]:
        return {caller.tenant for _, caller in self._by_hash.values() if caller.tenant is not None}

    def caller_for(self, authorization: str | None) -> Caller | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        self._maybe_reload()
        presented = token.strip().encode()
        entry = self._by_hash.get(hashlib.sha256(presented).digest())
        if entry is None or not hmac.compare_digest(entry[0], presented):
            return None
        return entry[1]
