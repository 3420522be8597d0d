"""Delayed jobs' cancel requests looked up on the control stream, one scan for every job that asks meanwhile.

Past CPW_CANCEL_MEMORY a delayed job that is due may have lost its cancel request, and the worker reads the
control stream from the job's submission on before it runs it. Jobs fall due in bursts, so one scan at a
time serves them all: it reads from the earliest submission of the jobs that asked before it began, up to
a marker it appends then, so it meets every request appended before any of them asked. A job that asks
while a scan runs waits for the next one (the running scan's marker may be older than the job's request):
N jobs that ask within one scan's time cost at most two scans, not N. Each scan ends within the timeout (a job
waits for at most two).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

log = logging.getLogger(__name__)

Keep = Callable[[str, str, float | None], None]  # a cancel request: job id, reason, not_before
# Hands every cancel request on the control stream from `since` on to `keep`; False if the scan did not end
# within `timeout` or the broker failed (ProviderWorker._scan_control).
Scan = Callable[[datetime, Keep, float], Awaitable[bool]]


class LookupFailed(Exception):
    """The scan that would answer did not end within its timeout, or the broker failed."""


class CancelLookups:
    """One scan of the control stream at a time, for every job that asked before it began."""

    def __init__(self, scan: Scan, timeout: float) -> None:
        self._scan = scan
        self.timeout = timeout  # each scan's, as for a job's own look-up
        self._asked: list[tuple[str, datetime, asyncio.Future[str | None]]] = []
        self._scanning: asyncio.Task[None] | None = None

    async def reason(self, job_id: str, since: datetime) -> str | None:
        """The reason of the job's cancel request on the control stream from `since` on, None if it has none
        there. Raises LookupFailed. Waits for the running scan, if any, and then for one that answers."""
        asked: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._asked.append((job_id, since, asked))
        if self._scanning is None or self._scanning.done():
            self._scanning = asyncio.create_task(self._scans())
        return await asked

    async def _scans(self) -> None:
        try:
            while self._asked:  # those who asked during the last scan
                batch = [one for one in self._asked if not one[2].done()]  # not those whose job went away
                self._asked = []
                if batch:
                    await self._answer(batch)
        finally:
            self._give_up()

    def _give_up(self) -> None:
        """No scan runs any more: the jobs still waiting (none but when closed) get LookupFailed."""
        self._scanning = None
        for _, _, asked in self._asked:
            if not asked.done():
                asked.set_exception(LookupFailed())
        self._asked.clear()

    async def _answer(self, batch: list[tuple[str, datetime, asyncio.Future[str | None]]]) -> None:
        wanted = {job_id for job_id, _, _ in batch}
        found: dict[str, str] = {}

        def keep(job_id: str, reason: str, not_before: float | None) -> None:
            if job_id in wanted:
                found.setdefault(job_id, reason)  # the first request's reason

        done = False
        try:
            done = await self._scan(min(since for _, since, _ in batch), keep, self.timeout)
        except Exception:  # a bug here must not leave the jobs waiting for ever
            log.exception("looking up cancel requests on the control stream failed")
        finally:  # cancelled (close) too
            for job_id, _, asked in batch:
                if asked.done():  # its job went away (cancelled)
                    continue
                if done:
                    asked.set_result(found.get(job_id))
                else:
                    asked.set_exception(LookupFailed())

    async def close(self) -> None:
        """Stop scanning; jobs still waiting get LookupFailed."""
        scanning = self._scanning
        if scanning is not None:
            scanning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scanning
        self._give_up()  # also if it was cancelled before it began
