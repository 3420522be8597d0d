"""Cancel requests looked up on the control stream: one scan at a time serves every job that asked before it.

The stream here is a list and a scan is the worker's contract (`lookups.Scan`): it meets every request
appended before it began, from `since` on. Each scan waits for the test to let it end, so the test decides
which jobs ask while it runs. The real scan, on RabbitMQ and the embedded broker: tests/contract/test_delayed.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from controlplane_workers.lookups import CancelLookups, Keep, LookupFailed

pytestmark = pytest.mark.timeout(10)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Stream:
    def __init__(self) -> None:
        self.requests: list[tuple[datetime, str, str]] = []  # (appended at, job id, reason)
        self.scans: list[datetime] = []  # each scan's since
        self.began = asyncio.Event()
        self.end = asyncio.Event()
        self.answer = True

    def cancel(self, at: datetime, job_id: str, reason: str) -> None:
        self.requests.append((at, job_id, reason))

    async def scan(self, since: datetime, keep: Keep, timeout: float) -> bool:
        up_to = len(self.requests)  # the scan's marker: appended as it begins
        self.scans.append(since)
        self.began.set()
        await self.end.wait()
        self.began.clear()
        self.end.clear()
        for at, job_id, reason in self.requests[:up_to]:
            if at >= since:
                keep(job_id, reason, None)
        return self.answer


async def asked(lookups: CancelLookups, *jobs: tuple[str, datetime]) -> list[asyncio.Task[str | None]]:
    """The jobs ask together (in one turn of the loop)."""
    tasks = [asyncio.create_task(lookups.reason(job_id, since)) for job_id, since in jobs]
    await asyncio.sleep(0)
    return tasks


async def test_jobs_that_ask_together_share_one_scan_from_the_earliest_of_their_times():
    stream = Stream()
    stream.cancel(T0, "b", "not b")
    lookups = CancelLookups(stream.scan, timeout=5)
    tasks = await asked(lookups, *((job, T0 + timedelta(seconds=i)) for i, job in enumerate("abc")))
    await stream.began.wait()
    stream.end.set()
    assert await asyncio.gather(*tasks) == [None, "not b", None]
    assert stream.scans == [T0]


async def test_a_job_that_asks_while_a_scan_runs_waits_for_the_next_one():
    # The running scan's marker is older than the job's request: it would miss a request appended meanwhile,
    # and it reads from a later time than this job's.
    stream = Stream()
    lookups = CancelLookups(stream.scan, timeout=5)
    [first] = await asked(lookups, ("a", T0))
    await stream.began.wait()
    stream.cancel(T0 - timedelta(seconds=5), "early", "asked late")
    stream.cancel(T0, "b", "after the first scan began")
    later = [*await asked(lookups, ("b", T0)), *await asked(lookups, ("early", T0 - timedelta(seconds=5)))]
    stream.end.set()
    assert await first is None
    await stream.began.wait()  # the second scan, for both
    stream.end.set()
    assert await asyncio.gather(*later) == ["after the first scan began", "asked late"]
    assert stream.scans == [T0, T0 - timedelta(seconds=5)]


async def test_a_scan_that_fails_fails_the_jobs_it_serves_and_the_next_job_scans_again():
    stream = Stream()
    lookups = CancelLookups(stream.scan, timeout=5)
    jobs = await asked(lookups, ("a", T0), ("b", T0))
    await stream.began.wait()
    stream.answer = False  # not within the timeout, or the broker failed
    stream.end.set()
    for job in jobs:
        with pytest.raises(LookupFailed):
            await job
    stream.answer = True
    [again] = await asked(lookups, ("a", T0))
    await stream.began.wait()
    stream.end.set()
    assert await again is None and len(stream.scans) == 2


async def test_a_job_that_goes_away_leaves_the_others_their_answer():
    stream = Stream()
    stream.cancel(T0, "b", "not b")
    lookups = CancelLookups(stream.scan, timeout=5)
    gone, staying = await asked(lookups, ("a", T0), ("b", T0))
    await stream.began.wait()
    gone.cancel()
    stream.end.set()
    assert await staying == "not b"
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_close_fails_the_jobs_still_waiting():
    stream = Stream()
    lookups = CancelLookups(stream.scan, timeout=5)
    [running] = await asked(lookups, ("a", T0))
    await stream.began.wait()
    [waiting] = await asked(lookups, ("b", T0))
    await lookups.close()
    for job in (running, waiting):
        with pytest.raises(LookupFailed):
            await job


async def test_close_before_the_scan_began_fails_the_job_too():
    stream = Stream()
    lookups = CancelLookups(stream.scan, timeout=5)
    job = asyncio.create_task(lookups.reason("a", T0))
    await asyncio.sleep(0)  # it asked; its scan has not begun
    await lookups.close()
    with pytest.raises(LookupFailed):
        await job
    assert stream.scans == []
