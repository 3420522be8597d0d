"""Exponential backoff with jitter for retried jobs."""

from __future__ import annotations

import random


def backoff(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Delay before attempt `attempt + 1`: base * 2^(attempt-1), capped, spread by +-jitter."""
    delay = min(cap, base * 2 ** max(attempt - 1, 0))
    return delay * random.uniform(1 - jitter, 1 + jitter) if jitter else delay
