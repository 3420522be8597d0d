"""A WorkerRole of a team's own, for the tests: it reconciles on a timer instead of consuming the job queue."""

from __future__ import annotations

import asyncio
from typing import Any

from controlplane_workers import Job, WorkerRole


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
