"""What a provider may ask about the job it is running (job id, attempt), without new arguments."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class JobContext:
    job_id: str
    attempt: int
    max_attempts: int
    worker_id: str
    tenant: str | None = None


_current: ContextVar[JobContext | None] = ContextVar("cpw_job", default=None)


def current_job() -> JobContext | None:
    """The job being run by this task (or the thread a sync provider runs in), else None."""
    return _current.get()


def set_current_job(context: JobContext | None) -> object:
    return _current.set(context)
