"""Idempotency-Key: a retried submission gets the first one's answer instead of a second job.

This replica remembers the answers it gave (`IdempotencyCache`); a key first used on another replica,
or before this one restarted, is found in the Accepted records every replica reads (`shared_key`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import orjson
from starlette.requests import Request

from .errors import ApiError

CacheKey = tuple[str | None, str]


def shared_key(tenant: str | None, key: str) -> str:
    """The Idempotency-Key as it travels on the results stream: hashed with its tenant, so keys are
    per tenant and a client's key is not written out as it came."""
    return hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()[:32]


def fingerprint(request: Request, raw_body: bytes) -> str:
    """What makes two requests "the same" for a key: method, path, query, priority and delay headers, body.

    `wait` is left out (it says how long to wait for the answer, not what to do). A request with no
    query and no priority header hashes as before the query counted, so older records still match."""
    query = sorted((k, v) for k, v in request.query_params.multi_items() if k != "wait")
    header = request.headers.get("x-ms-priority")
    delay = request.headers.get("x-cpw-delay")  # appended only when given: older fingerprints still match
    parts: list[object] = [query, header] if delay is None else [query, header, delay]
    extra = orjson.dumps(parts) if query or header is not None or delay is not None else b""
    head = request.method.encode() + b" " + request.url.path.encode() + extra
    return hashlib.sha256(head + b"\n" + raw_body).hexdigest()[:32]


def key_reused() -> ApiError:
    return ApiError(
        422,
        "IdempotencyKeyReused",
        "This Idempotency-Key was used with another request; use a new key.",
        details=[
            {
                "code": "IdempotencyKeyReused",
                "target": "Idempotency-Key",
                "message": "the same key came with another method, path, query, priority or body",
            }
        ],
        reason="conflict",
    )


@dataclass
class Remembered:
    """One key's first request: in progress until `done`, then the job it made (if it made one).

    Only the job id is kept, not the answer: a replay is answered again from the job, as a replay on
    another replica is, so a tenant's large bodies under fresh keys cost this cache ~200 bytes each."""

    fingerprint: str
    at: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    job_id: str | None = None

    def keep(self, job_id: str) -> None:
        self.job_id = job_id
        self.done.set()


class IdempotencyCache:
    """(tenant, Idempotency-Key) -> the job its first request made, for `window` seconds."""

    def __init__(self, window: float, max_entries: int = 200_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self.entries: OrderedDict[CacheKey, Remembered] = OrderedDict()

    def _expire(self, now: float) -> None:
        entries = self.entries
        while entries:
            key, oldest = next(iter(entries.items()))
            if now - oldest.at < self.window and len(entries) <= self.max_entries:
                break
            del entries[key]

    def get(self, key: CacheKey) -> Remembered | None:
        self._expire(time.time())
        return self.entries.get(key)

    def begin(self, key: CacheKey, fingerprint: str) -> Remembered:
        entry = self.entries[key] = Remembered(fingerprint, time.time())
        return entry

    def forget(self, key: CacheKey, entry: Remembered) -> None:
        if self.entries.get(key) is entry:
            del self.entries[key]
        entry.done.set()
