"""Job ids: time-ordered, so a reader can tell an id it no longer holds (expired) from one it never saw.

32 hex digits in the UUIDv7 layout (RFC 9562): 48 bits of Unix milliseconds, the version, random bits.
Every submitter (the SDK's JobQueue, the API) makes its ids here.
"""

from __future__ import annotations

import os
import time


def new_job_id(now: float | None = None) -> str:
    """A fresh id made at `now` (default: the current time)."""
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFF_FFFF_FFFF
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | (rand & ((1 << 76) - 1))
    value = (value & ~(0xC << 60)) | (0x8 << 60)  # RFC 9562 variant bits
    return f"{value:032x}"


def job_id_time(job_id: str) -> float | None:
    """When an id made by `new_job_id` was made; None for any other id (a caller's own id)."""
    if len(job_id) != 32 or job_id[12] != "7":
        return None
    try:
        return int(job_id[:12], 16) / 1000.0
    except ValueError:
        return None
