"""Bearer tokens mapped to tenants, from `CPW_API_TOKENS_FILE` (JSON or YAML: token -> tenant).

The presented token is hashed and looked up by its SHA-256, then compared with
`hmac.compare_digest`, so the time taken does not depend on how much of a token matched. The file
is read again when it changes (a rotated Kubernetes Secret), at most every `recheck` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import Path

import orjson
import yaml


class TokenFileError(Exception):
    pass


def load_tokens(path: Path) -> dict[str, str]:
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
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise TokenFileError(f"{path} must map token strings to tenant strings")
    if any(not token for token in data):
        raise TokenFileError(f"{path} holds an empty token")
    return data


class TokenAuth:
    """token -> tenant; `tenant_for(authorization header)` is None when the token is unknown."""

    def __init__(self, path: Path, recheck: float = 5.0) -> None:
        self.path = path
        self.recheck = recheck
        self._by_hash: dict[bytes, tuple[bytes, str]] = {}
        self._mtime = 0.0
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        tokens = load_tokens(self.path)
        self._by_hash = {hashlib.sha256(t.encode()).digest(): (t.encode(), tenant) for t, tenant in tokens.items()}
        self._mtime = os.stat(self.path).st_mtime
        self._checked = time.monotonic()

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.recheck:
            return
        self._checked = now
        try:
            if os.stat(self.path).st_mtime != self._mtime:
                self._load()
        except (OSError, TokenFileError):
            pass  # keep the tokens we have; a half-written Secret must not lock everyone out

    @property
    def tenants(self) -> set[str]:
        return {tenant for _, tenant in self._by_hash.values()}

    def tenant_for(self, authorization: str | None) -> str | None:
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
