"""The cancel requests a worker has read from the control stream, bounded.

Most requests matter for moments (the job is queued or running), so the latest `limit` are kept by
count. A delayed job canceled while it waits arrives hours later, after any number of other
requests: its request is kept by time instead, until its start time plus `grace` has passed, so no
count of later requests can push it out before the job arrives.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict

CANCEL_MEMORY = 100_000


class CancelMemory:
    def __init__(self, limit: int = CANCEL_MEMORY, grace: float = 3600.0) -> None:
        self.limit = limit
        self.grace = grace
        self.recent: OrderedDict[str, str] = OrderedDict()  # job id -> reason
        self.waiting: dict[str, tuple[float, str]] = {}  # job id -> (kept until, reason)
        self._expiry: list[tuple[float, str]] = []  # (kept until, job id), soonest first

    def add(self, job_id: str, reason: str, not_before: float | None = None) -> None:
        now = time.time()
        self._forget_expired(now)
        if not_before is not None and not_before + self.grace > now:
            until = not_before + self.grace
            self.waiting[job_id] = (until, reason)
            heapq.heappush(self._expiry, (until, job_id))
            return
        self.recent[job_id] = reason
        self.recent.move_to_end(job_id)
        if len(self.recent) > self.limit:
            self.recent.popitem(last=False)

    def _forget_expired(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            until, job_id = heapq.heappop(expiry)
            kept = self.waiting.get(job_id)
            if kept is not None and kept[0] == until:
                del self.waiting[job_id]

    def get(self, job_id: str) -> str | None:
        """The reason of the job's cancel request, None if it has none here."""
        reason = self.recent.get(job_id)
        if reason is not None:
            return reason
        kept = self.waiting.get(job_id)
        return None if kept is None else kept[1]

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.recent or job_id in self.waiting

    def __len__(self) -> int:
        return len(self.recent) + len(self.waiting)
