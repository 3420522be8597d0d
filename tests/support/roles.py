"""WorkerRoles of a team's own, for the tests: one reconciles on a timer, one watches the fleet through a broker."""

from __future__ import annotations

import asyncio
from typing import Any

from controlplane_workers import Job, WorkerRole
from controlplane_workers.broker import open_broker
from controlplane_workers.topology import Topology


class Ticker(WorkerRole):
    """Counts ticks every 50 ms while it runs; `process_job` echoes the job's resource name."""

    ticks = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            Ticker.ticks += 1
            await asyncio.sleep(0.05)

    async def stop(self, drain_timeout: float | None = None) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    @property
    def ready(self) -> bool:
        return hasattr(self, "_task") and not self._task.done()

    async def process_job(self, job: Job) -> Any:
        return {"reconciled": job.request.resource_name}

    def status(self) -> dict[str, Any]:
        return {**super().status(), "ticks": Ticker.ticks}


class FleetWatcher(WorkerRole):
    """Watches the fleet's heartbeats through a broker of its own: a role that holds a subscription, as a team's
    reconciler or listener would. Ready while the broker is connected."""

    heard = 0

    async def start(self) -> None:
        self.broker = open_broker(
            self.settings.rabbitmq_url,
            Topology.from_settings(self.settings),
            name=f"fleet-watcher {self.worker_id}",
            publish_timeout=self.settings.publish_timeout,
        )
        async with self.broker.connecting():
            self._subscription = await self.broker.subscribe_heartbeats(self._heard)

    def _heard(self, _: bytes) -> None:
        FleetWatcher.heard += 1

    async def stop(self, drain_timeout: float | None = None) -> None:
        await self._subscription.cancel()
        await self.broker.close()

    @property
    def ready(self) -> bool:
        return hasattr(self, "_subscription") and self.broker.connected.is_set()

    async def process_job(self, job: Job) -> Any:
        return {"heard": FleetWatcher.heard}
