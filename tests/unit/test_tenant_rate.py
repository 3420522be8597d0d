"""The per-tenant token bucket (controlplane_api/ratelimit.py), on an injected clock: at and over the limit."""

from __future__ import annotations

import pytest

from controlplane_api.ratelimit import TenantRate, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_admitted_and_the_next_one_waits_for_its_token():
    clock = Clock()
    rate = TenantRate(rate=2.0, burst=3, clock=clock)
    assert [rate.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # at the limit: the whole burst
    assert rate.take("a") == pytest.approx(0.5)  # over it: one token at 2/s is 0.5 s away
    assert rate.take("a") == pytest.approx(0.5)  # a refused take takes nothing
    clock.now += 0.25
    assert rate.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert rate.take("a") == 0.0 and rate.take("a") == pytest.approx(0.5)


def test_tenants_have_their_own_buckets():
    clock = Clock()
    rate = TenantRate(rate=1.0, burst=1, clock=clock)
    assert rate.take("a") == 0.0 and rate.take("a") > 0
    assert rate.take("b") == 0.0 and rate.take(None) == 0.0


def test_the_rate_is_sustained_and_an_idle_bucket_fills_only_to_the_burst():
    clock = Clock()
    rate = TenantRate(rate=10.0, burst=5, clock=clock)
    admitted = 0
    for _ in range(1000):  # 100 s at 5x the rate, 50 tries a second
        clock.now += 0.02
        admitted += rate.take("a") == 0.0
    assert admitted == pytest.approx(1000 * 0.02 * 10 + 5, abs=2)
    clock.now += 3600
    assert sum(rate.take("a") == 0.0 for _ in range(10)) == 5


def test_rate_zero_is_no_limit():
    rate = TenantRate(rate=0.0, burst=1, clock=Clock())
    assert all(rate.take("a") == 0.0 for _ in range(10_000))


@pytest.mark.parametrize(("seconds", "header"), [(0.001, "1"), (0.5, "1"), (1.0, "1"), (1.01, "2"), (7.2, "8")])
def test_retry_after_is_whole_seconds_at_least_one(seconds, header):
    assert retry_after(seconds) == header
