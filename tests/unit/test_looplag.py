"""The event-loop lag monitor sees a loop that was held, and stops with its block."""

from __future__ import annotations

import asyncio
import time

import pytest

from controlplane_workers import looplag

pytestmark = pytest.mark.timeout(10)


class Recorder:
    """A histogram stand-in that says when it saw a lag of at least `at_least` seconds."""

    def __init__(self, at_least: float) -> None:
        self.at_least = at_least
        self.values: list[float] = []
        self.saw_it = asyncio.Event()

    def observe(self, value: float) -> None:
        self.values.append(value)
        if value >= self.at_least:
            self.saw_it.set()


async def test_a_loop_held_for_80_ms_is_observed_as_late_by_about_that() -> None:
    recorder = Recorder(at_least=0.06)
    async with looplag.watching(recorder, interval=0.005):  # type: ignore[arg-type]
        await asyncio.sleep(0)  # let the monitor arm its first timer
        time.sleep(0.08)  # noqa: ASYNC251 - the behaviour under test: a coroutine that blocks the loop
        await asyncio.wait_for(recorder.saw_it.wait(), 5)
    late = max(recorder.values)
    assert 0.06 <= late < 1.0, recorder.values


async def test_the_monitor_stops_with_its_block() -> None:
    recorder = Recorder(at_least=0.0)
    async with looplag.watching(recorder, interval=0.001):  # type: ignore[arg-type]
        (task,) = {t for t in asyncio.all_tasks() if t.get_name() == "cpw-event-loop-lag"}
        await asyncio.wait_for(recorder.saw_it.wait(), 5)
    assert task.done()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "cpw-event-loop-lag"]
