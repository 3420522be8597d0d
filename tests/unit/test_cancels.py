"""The worker's memory of cancel requests: bounded by count, except a delayed job's, kept until it starts."""

from __future__ import annotations

import time

import pytest

from controlplane_workers.cancels import CancelMemory

pytestmark = pytest.mark.timeout(10)


def test_recent_requests_are_kept_by_count():
    memory = CancelMemory(limit=3)
    for i in range(5):
        memory.add(f"j{i}", f"reason {i}")
    assert "j0" not in memory and "j1" not in memory and memory.get("j4") == "reason 4" and len(memory) == 3


def test_a_waiting_jobs_request_outlives_any_number_of_later_ones():
    memory = CancelMemory(limit=3, grace=60)
    memory.add("delayed", "not today", not_before=time.time() + 3600)
    for i in range(1000):
        memory.add(f"j{i}", "other")
    assert "delayed" in memory and memory.get("delayed") == "not today"
    assert len(memory) == 4  # the bound by count still holds for the rest


def test_a_waiting_jobs_request_is_forgotten_once_its_start_and_grace_have_passed(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    memory = CancelMemory(limit=3, grace=60)
    memory.add("past", "late", not_before=900.0)  # its time and grace are over: kept by count like any other
    memory.add("waiting", "x", not_before=1100.0)
    assert "past" in memory.recent and "waiting" in memory.waiting
    now[0] = 1159.0
    memory.add("another", "y")
    assert "waiting" in memory
    now[0] = 1161.0
    memory.add("and-another", "z")
    assert "waiting" not in memory and not memory._expiry


@pytest.mark.parametrize("over", [0, 1, 5])
def test_waiting_requests_at_and_over_their_limit(monkeypatch, over):
    # At the limit every request is kept; past it the ones whose jobs start last are dropped, each reported,
    # and the memory says which waiting jobs it can no longer answer for.
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    drops: list[str] = []
    memory = CancelMemory(limit=3, grace=60, waiting_limit=3, on_drop=drops.append)
    starts = [2000.0 + 100 * i for i in range(3 + over)]
    for i, start in reversed(list(enumerate(starts))):  # the latest first: each later one evicts one of them
        memory.add(f"w{i}", "x", not_before=start)
    assert len(memory.waiting) == 3 and drops == ["waiting"] * over
    assert all(f"w{i}" in memory for i in range(3))  # the three that start soonest
    assert not memory.may_have_dropped(starts[2])
    if over:
        assert memory.may_have_dropped(starts[3]) and memory.may_have_dropped(starts[-1] + 500)
        assert memory.horizon == starts[3] + 60
    # once every dropped request has expired, the memory answers for every waiting job again
    now[0] = starts[-1] + 61
    assert not memory.may_have_dropped(now[0] + 10)


def test_recent_requests_dropped_past_the_limit_are_reported():
    drops: list[str] = []
    memory = CancelMemory(limit=2, on_drop=drops.append)
    for i in range(2):
        memory.add(f"j{i}", "x")
    assert drops == []
    memory.add("j2", "x")
    assert drops == ["recent"] and "j0" not in memory


def test_replaced_and_expired_waiting_requests_leave_no_garbage(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    memory = CancelMemory(grace=1, waiting_limit=10)
    for i in range(10_000):
        now[0] += 1
        memory.add(f"w{i}", "x", not_before=now[0] + 0.5)  # each expires before the next arrives
    assert len(memory.waiting) <= 2 and len(memory._latest) < 100 and len(memory._expiry) < 100
