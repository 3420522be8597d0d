"""The drills' recovery times: a fault after the last job is n/a, not a recovery that never came."""

from __future__ import annotations

import math
from types import SimpleNamespace

from tests.drills.harness import Account, JobRecord, recovery


def job(n: int, accepted_at: float | None, finished: str | None = None) -> JobRecord:
    record = JobRecord(n, f"k{n}", "ok", job_id=f"j{n}" if accepted_at else None, accepted_at=accepted_at)
    record.final = {"status": "Succeeded", "finishedAt": finished} if finished else None
    return record


T0 = 1_764_547_200.0  # 2025-12-01T00:00:00Z
AT = "2025-12-01T00:00:{:06.3f}Z"


def test_jobs_after_the_fault_give_the_recovery_time():
    load = SimpleNamespace(
        records=[job(0, T0 + 1, AT.format(2)), job(1, T0 + 12, AT.format(13.5))], last_new_at=T0 + 12
    )
    assert recovery(load, T0 + 10, "restart") == ("restart", 2.0, 3.5)


def test_a_fault_after_every_job_was_in_and_done_is_not_applicable():
    load = SimpleNamespace(records=[job(0, T0 + 1, AT.format(2))], last_new_at=T0 + 1)
    what, accept, finish = recovery(load, T0 + 10, "close_all")
    assert math.isnan(accept) and math.isnan(finish)
    account = Account("x")
    account.recoveries = [(what, accept, finish), ("restart", 0.5, 0.7)]
    assert account.max_recovery_s == 0.7
    assert "close_all:n/a/n/a" in account.line()


def test_a_job_still_waiting_after_the_fault_is_a_recovery_that_never_came():
    waiting = SimpleNamespace(records=[job(0, T0 + 1, AT.format(2)), job(1, None)], last_new_at=T0 + 1)
    assert recovery(waiting, T0 + 10, "restart")[1] == math.inf
    running = SimpleNamespace(records=[job(0, T0 + 1)], last_new_at=T0 + 1)
    assert recovery(running, T0 + 10, "restart")[2] == math.inf
