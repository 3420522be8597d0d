"""Re-establishing broker subscriptions: backoff with jitter, one resume loop, a log line per state change."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiormq
import pytest

from controlplane_workers.broker.rabbitmq import _StreamFollower
from controlplane_workers.broker.recovery import RECONNECTS, Backoff, Outage, RepeatFilter, cause_of


def test_backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(0.1, 5.0, rng=lambda: 1.0)
    assert [round(backoff.next(), 3) for _ in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff.capped
    backoff.reset()
    low = Backoff(0.1, 5.0, rng=lambda: 0.0)
    assert low.next() == pytest.approx(0.05)  # never below half the nominal delay


def test_causes_are_a_small_vocabulary() -> None:
    home_down = aiormq.exceptions.ChannelNotFoundEntity(
        "NOT_FOUND - home node 'n' of durable queue 'q' is down or inaccessible"
    )
    starting = aiormq.exceptions.ChannelPreconditionFailed("stream does not have a replica on the local node")
    assert cause_of(home_down) == "node-down"
    assert cause_of(starting) == "stream-member-starting"
    assert cause_of(aiormq.exceptions.ChannelAccessRefused("x")) == "channel-closed"
    assert cause_of(ConnectionResetError()) == "connection-lost"
    assert cause_of(TimeoutError()) == "timeout"
    assert cause_of(None) == "connection-lost"
    assert cause_of(ValueError("?")) == "other"


def test_an_outage_logs_lost_retrying_and_recovered_once_each(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.outage")
    outage = Outage("stream s", "stream", log, Backoff(0.1, 0.4, rng=lambda: 1.0))
    before = RECONNECTS.labels("stream", "node-down")._value.get()  # noqa: SLF001
    exc = aiormq.exceptions.ChannelNotFoundEntity("home node 'n' of durable queue 'q' is down or inaccessible")
    with caplog.at_level(logging.INFO, "test.outage"):
        for _ in range(50):
            outage.delay(exc)
        outage.recovered()
        outage.recovered()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert messages[0].startswith("stream s lost (node-down)")
    assert messages[1] == "stream s still down; retrying every 0.4 s"
    assert messages[2].startswith("stream s recovered after")
    assert not any(r.exc_info for r in caplog.records)  # no traceback per attempt
    assert RECONNECTS.labels("stream", "node-down")._value.get() == before + 1  # noqa: SLF001
    assert outage.backoff.current == 0.1  # the next outage starts fast again


def test_a_quiet_outage_says_nothing() -> None:
    records: list[logging.LogRecord] = []
    log = logging.getLogger("test.quiet")
    log.addHandler(handler := logging.Handler())
    handler.emit = records.append  # type: ignore[method-assign]
    outage = Outage("stream s", "stream", log)
    outage.lost(ConnectionResetError(), quiet=True)
    outage.delay()
    outage.recovered()
    log.removeHandler(handler)
    assert records == []


def test_the_repeat_filter_passes_one_record_per_message_a_window() -> None:
    now = [0.0]
    f = RepeatFilter(window=60, clock=lambda: now[0])
    record = lambda msg: logging.LogRecord("aio_pika.robust_connection", 30, "", 0, msg, None, None)  # noqa: E731
    assert f.filter(record("Connection attempt to %s failed"))
    assert not f.filter(record("Connection attempt to %s failed"))
    assert f.filter(record("another message"))
    now[0] = 61
    assert f.filter(record("Connection attempt to %s failed"))


class _Channel:
    async def ready(self) -> None:
        return None


class _Broker:
    def __init__(self) -> None:
        self.outage = Outage("broker connection", "connection", logging.getLogger("test"))


async def test_a_stream_resumes_in_one_loop_however_often_its_channel_reopens(caplog: pytest.LogCaptureFixture) -> None:
    """Each failed consume closes the channel and aio-pika reopens it: one resume loop per reopen
    multiplied into hundreds of attempts (and tracebacks) a second during a node restart (issue 22)."""
    follower = _StreamFollower(_Broker(), "provider.control", lambda batch: None, "next")  # type: ignore[arg-type]
    follower.channel = _Channel()  # type: ignore[assignment]
    follower.outage.backoff = Backoff(0.01, 0.04)
    attempts = 0

    async def resubscribe() -> None:
        nonlocal attempts
        attempts += 1
        follower._on_reopen()  # noqa: SLF001 - what aio-pika does after the failed consume closed the channel
        if attempts <= 6:
            raise aiormq.exceptions.ChannelNotFoundEntity("home node 'n' of durable queue 'q' is down or inaccessible")

    follower.resubscribe = resubscribe  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, "controlplane_workers.broker.rabbitmq"):
        for _ in range(5):
            follower._on_reopen()  # noqa: SLF001
        resume: Any = follower._resume  # noqa: SLF001
        await asyncio.wait_for(resume, 5)
        await asyncio.sleep(0.05)  # a second loop, if one had started, would have tried again by now
    assert attempts == 7
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages  # lost, retrying every N s, recovered
    assert not any(r.exc_info for r in caplog.records)
