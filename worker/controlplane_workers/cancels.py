"""The cancel requests a worker has read from the control stream, bounded.

Most requests matter for moments (the job is queued or running), so the latest `limit` are kept by
count. A delayed job canceled while it waits arrives hours later, after any number of other
requests: its request is kept by time instead, until its start time plus `grace` has passed, so no
count of later requests can push it out before the job arrives.

Those are bounded too, by `waiting_limit`: past it the request whose job starts last is dropped, and
`may_have_dropped` then says which waiting jobs this memory can no longer answer for (the worker asks
the control stream about those before it runs one). Every drop is reported to `on_drop`.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Callable

CANCEL_MEMORY = 100_000


class CancelMemory:
    def __init__(
        self,
        limit: int = CANCEL_MEMORY,
        grace: float = 3600.0,
        waiting_limit: int = CANCEL_MEMORY,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.limit = limit
        self.grace = grace
        self.waiting_limit = waiting_limit
        self.on_drop = on_drop  # called with "recent" or "waiting" for each request dropped past its limit
        self.recent: OrderedDict[str, str] = OrderedDict()  # job id -> reason
        self.waiting: dict[str, tuple[float, str]] = {}  # job id -> (kept until, reason)
        self._expiry: list[tuple[float, str]] = []  # (kept until, job id), soonest first
        self._latest: list[tuple[float, str]] = []  # (-kept until, job id), latest first (lazy: stale entries)
        # Waiting requests kept until `horizon` or later may have been dropped, up to `_dropped_until`.
        self.horizon = math.inf
        self._dropped_until = 0.0

    def add(self, job_id: str, reason: str, not_before: float | None = None) -> None:
        now = time.time()
        self._forget_expired(now)
        if not_before is not None and not_before + self.grace > now:
            self._keep_waiting(job_id, reason, not_before + self.grace)
            return
        self.recent[job_id] = reason
        self.recent.move_to_end(job_id)
        if len(self.recent) > self.limit:
            self.recent.popitem(last=False)
            self._dropped("recent")

    def _keep_waiting(self, job_id: str, reason: str, until: float) -> None:
        self.waiting[job_id] = (until, reason)
        heapq.heappush(self._expiry, (until, job_id))
        heapq.heappush(self._latest, (-until, job_id))
        while len(self.waiting) > self.waiting_limit:  # drop the one needed last: the others come sooner
            latest, dropped = heapq.heappop(self._latest)
            if self.waiting.get(dropped, (None,))[0] == -latest:
                del self.waiting[dropped]
                self.horizon = min(self.horizon, -latest)
                self._dropped_until = max(self._dropped_until, -latest)
                self._dropped("waiting")
        if len(self._latest) > 2 * len(self.waiting) + 64:  # stale entries of expired or replaced requests
            self._latest = [(-until, job_id) for job_id, (until, _) in self.waiting.items()]
            heapq.heapify(self._latest)

    def _dropped(self, kind: str) -> None:
        if self.on_drop is not None:
            self.on_drop(kind)

    def _forget_expired(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            until, job_id = heapq.heappop(expiry)
            kept = self.waiting.get(job_id)
            if kept is not None and kept[0] == until:
                del self.waiting[job_id]
        if self._dropped_until < now:  # every dropped request has expired as well
            self.horizon = math.inf

    def may_have_dropped(self, not_before: float) -> bool:
        """Whether the request of a job waiting until `not_before` may have been dropped past the limit
        (it is kept until `not_before + grace`, which is at or past the soonest dropped one's)."""
        self._forget_expired(time.time())
        return not_before + self.grace >= self.horizon

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
