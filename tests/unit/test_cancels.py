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
