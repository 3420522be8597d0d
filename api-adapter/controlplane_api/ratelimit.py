"""Per-tenant submission rate: a token bucket per tenant, so one tenant flooding the API cannot starve the
others (issue 20). Separate from the cap on queued jobs (slots.py): the cap bounds how much a tenant may
have waiting, this bounds how fast it may add to it, so a flood is refused at the door (429 + Retry-After)
instead of filling the queue ahead of everyone else's jobs.

Per process: with N API replicas behind a Service a tenant may submit up to N x rate. Tenants come from
the tokens file, so the buckets are as many as its tenants (one for an API without tokens).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TenantRate:
    """`rate` submissions a second per tenant on average, up to `burst` at once; rate 0: no limit."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str | None, tuple[float, float]] = {}  # tenant -> (tokens, when counted)

    def take(self, tenant: str | None) -> float:
        """Take a token for one submission of `tenant`: 0.0 when there was one, else the seconds until
        there will be (nothing is taken then)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, then = self._buckets.get(tenant, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1:
            self._buckets[tenant] = (tokens - 1, now)
            return 0.0
        self._buckets[tenant] = (tokens, now)
        return (1 - tokens) / self.rate


def retry_after(seconds: float) -> str:
    """Retry-After is whole seconds (RFC 9110); at least 1, rounded up so a client that obeys it finds a token."""
    return str(max(1, math.ceil(seconds)))
