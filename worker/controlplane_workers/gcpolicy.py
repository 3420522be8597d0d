"""Keep the cyclic garbage collector from stopping a process for a scan of its whole status index.

A process that follows the results stream (`cpw api`, any `JobQueue` user) holds every job of the
stream's retention in its index (3-4 GC-tracked objects per job: the record, its __dict__, its
fields-set, a result dict). CPython runs a full (generation 2) collection each time the long-lived
objects grew by a quarter, and a full collection walks all of them: ~100 ms per 100,000 jobs on a
2-vCPU machine, seconds for the 1,000,000 the index may hold.
Every request in flight waits that long; it was the API's submit p99 under steady load. `cpw api`
installs this policy; an application that submits through `JobQueue` can call `install()` too
(docs/providers.md) — it changes the whole process's collector, so it is the application's choice.

After each full collection every surviving object is, by definition, reachable; `gc.freeze()` then
moves them to the permanent generation, which later collections skip. The next full collection
only walks what was promoted since, so its pause is bounded by the recent growth, not the index.
Frozen objects are still freed by reference counting (an evicted index record is freed at once);
only an object that was live at a full collection and later becomes part of unreachable *cyclic*
garbage is never reclaimed. The index's records, connections and metrics are not cyclic garbage
in normal operation, so the cost is a small bounded leak, measured in
docs/api.md ("Performance").
"""

from __future__ import annotations

import gc
from typing import Any

_installed = False


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()


def install() -> None:
    """Freeze the survivors of every full collection (idempotent; `cpw api` calls it)."""
    global _installed
    if not _installed:
        gc.callbacks.append(_on_gc)
        _installed = True


def uninstall() -> None:
    """Stop freezing and hand the frozen objects back to the collector (tests)."""
    global _installed
    if _installed:
        gc.callbacks.remove(_on_gc)
        _installed = False
    gc.unfreeze()
