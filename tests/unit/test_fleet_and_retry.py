"""The seed's in-process WorkerRegistry API, heartbeat expiry, and the backoff curve."""

from __future__ import annotations

import time

import orjson

from controlplane_workers import FleetRole, WorkerRegistry
from controlplane_workers.retry import backoff


def test_seed_registry_api():
    registry = WorkerRegistry()
    registry.register_worker("w1", FleetRole.WORKER, capacity=4)
    registry.register_worker("a1", "api")
    assert registry.get_worker("w1")["capacity"] == 4
    assert [w["worker_id"] for w in registry.get_active_workers(FleetRole.WORKER)] == ["w1"]
    assert registry.get_worker_status("w1") == "registered"
    assert registry.get_registry_status()["total_workers"] == 2
    assert registry.unregister_worker("w1") and not registry.unregister_worker("w1")
    assert registry.get_worker("w1") is None


def test_heartbeats_expire_after_missed_intervals():
    registry = WorkerRegistry(missed_heartbeats=3)
    registry.heard(orjson.dumps({"worker_id": "w9", "interval": 1.0, "in_flight": 2, "capacity": 8, "ready": True}))
    assert registry.get_registry_status()["in_flight"] == 2
    registry._heard["w9"]["received_at"] = time.time() - 3.5  # as if three beats were missed
    assert registry.get_worker("w9") is None
    registry.heard(b"not json")  # ignored, never raises
    registry.heard(orjson.dumps({"worker_id": "w8", "status": "stopped"}))
    assert registry.get_active_workers() == []


def test_backoff_doubles_caps_and_jitters():
    assert [backoff(a, base=1, cap=10, jitter=0) for a in range(1, 6)] == [1, 2, 4, 8, 10]
    values = {backoff(3, base=1, cap=100, jitter=0.25) for _ in range(200)}
    assert min(values) >= 3 and max(values) <= 5 and len(values) > 100
