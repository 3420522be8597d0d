"""The fleet: who is working, from heartbeats, plus the seed's in-process WorkerRegistry API."""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

import orjson

from .broker import Broker, Subscription


class FleetRole(str, Enum):
    """Which kind of process a fleet entry is (the seed called this FleetRole; that is now the base
    class of a worker's work, role.py)."""

    WORKER = "worker"
    API = "api"


class WorkerRegistry:
    """Workers known to this process: registered in process, or heard through heartbeats.

    A worker that misses `missed_heartbeats` intervals drops out of the fleet view.
    """

    def __init__(self, missed_heartbeats: int = 3) -> None:
        self.missed_heartbeats = missed_heartbeats
        self._local: dict[str, dict[str, Any]] = {}
        self._heard: dict[str, dict[str, Any]] = {}
        self._subscription: Subscription | None = None

    # -- the seed's in-process API
    def register_worker(self, worker_id: str, role: FleetRole | str = FleetRole.WORKER, **info: Any) -> None:
        self._local[worker_id] = {"worker_id": worker_id, "role": FleetRole(role).value, "at": time.time(), **info}

    def unregister_worker(self, worker_id: str) -> bool:
        return self._local.pop(worker_id, None) is not None

    def get_worker(self, worker_id: str) -> dict[str, Any] | None:
        return self._local.get(worker_id) or self._live().get(worker_id)

    def get_active_workers(self, role: FleetRole | str | None = None) -> list[dict[str, Any]]:
        workers = {**self._live(), **self._local}
        wanted = FleetRole(role).value if role else None
        return sorted(
            (w for w in workers.values() if wanted is None or w.get("role") == wanted),
            key=lambda w: str(w["worker_id"]),
        )

    def get_worker_status(self, worker_id: str) -> str | None:
        worker = self.get_worker(worker_id)
        return None if worker is None else str(worker.get("status", "registered"))

    def get_registry_status(self) -> dict[str, Any]:
        workers = self.get_active_workers()
        return {
            "total_workers": len(workers),
            "ready_workers": sum(1 for w in workers if w.get("ready")),
            "in_flight": sum(int(w.get("in_flight", 0)) for w in workers),
            "retries_held": sum(int(w.get("retries_held", 0)) for w in workers),
            "capacity": sum(int(w.get("capacity", 0)) for w in workers),
            "jobs_processed": sum(int(w.get("jobs_processed", 0)) for w in workers),
            "workers": workers,
        }

    # -- heartbeats
    def heard(self, body: bytes) -> None:
        try:
            beat = orjson.loads(body)
            worker_id = str(beat["worker_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if beat.get("status") == "stopped":
            self._heard.pop(worker_id, None)
        else:
            beat["received_at"] = time.time()
            self._heard[worker_id] = beat

    def _live(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        for worker_id, beat in list(self._heard.items()):
            interval = float(beat.get("interval", 5.0))
            beat["heartbeat_age_seconds"] = round(now - beat["received_at"], 3)
            if beat["heartbeat_age_seconds"] > interval * self.missed_heartbeats:
                del self._heard[worker_id]
        return self._heard

    async def follow(self, broker: Broker) -> None:
        self._subscription = await broker.subscribe_heartbeats(self.heard)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.cancel()
