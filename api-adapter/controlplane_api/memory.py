"""How many bytes the status index may hold: from the setting, else from the container's memory limit.

The chart passes the API container's memory limit with the downward API (`CPW_API_MEMORY_LIMIT_BYTES`,
`resourceFieldRef: limits.memory`), so raising `api.resources.limits.memory` raises the bound and
nobody does arithmetic; outside Kubernetes the cgroup's own limit is read. Half of what the process
has beyond its baseline goes to the index: the rest covers requests in flight, the idempotency
cache, the allocator's slack and the accounting's error (tests/unit/test_status_index.py).
"""

from __future__ import annotations

from pathlib import Path

from .settings import ApiSettings

# What an API process uses before it holds any job (interpreter, Starlette, aio-pika, buffers).
BASELINE_BYTES = 96 * 1024 * 1024
INDEX_SHARE = 0.5
MIN_INDEX_BYTES = 8 * 1024 * 1024
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
_UNLIMITED = 1 << 60  # cgroup v1 writes a huge number for "no limit"


def cgroup_memory_limit(paths: tuple[Path, ...] = CGROUP_LIMITS) -> int | None:
    """The memory limit of this process's cgroup (v2, then v1); None when there is none."""
    for path in paths:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isascii() or not text.isdigit():
            return None
        value = int(text)
        return None if value >= _UNLIMITED else value
    return None


def index_budget(limit: int | None) -> int | None:
    """The index's share of a memory limit; None (no byte bound) when the limit is unknown."""
    if limit is None:
        return None
    return max(MIN_INDEX_BYTES, int((limit - BASELINE_BYTES) * INDEX_SHARE))


def index_max_bytes(settings: ApiSettings) -> int | None:
    """CPW_API_INDEX_MAX_BYTES if set, else derived from CPW_API_MEMORY_LIMIT_BYTES or the cgroup."""
    if settings.api_index_max_bytes is not None:
        return settings.api_index_max_bytes
    return index_budget(settings.api_memory_limit_bytes or cgroup_memory_limit())
