"""WorkerRole: the seed's abstract base class of a worker process's work.

A role has a lifecycle (`start`, `stop` with a drain), reports its health (`ready`, `status`) and
processes jobs (`process_job`). `ProviderWorker` is the role that consumes `provider.jobs`; a team can
write its own (one that consumes another queue, or reconciles on a timer) and run it with the same
process runtime, ops port, drain and metrics: `cpw worker --role module:Class` (`CPW_WORKER_ROLE`).
"""

from __future__ import annotations

import abc
import importlib
from typing import Any

from .models import Job
from .providers import ProviderLookup
from .settings import Settings


class WorkerRole(abc.ABC):
    """One process's work. Built as `Role(settings, providers)`; `providers` may be ignored."""

    def __init__(self, settings: Settings, providers: ProviderLookup | None = None) -> None:
        self.settings = settings
        self.providers = providers
        self.worker_id = settings.worker_id

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and begin work. Raise BrokerUnavailable to be retried with backoff."""

    @abc.abstractmethod
    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop taking work, let what runs finish within `drain_timeout` seconds, hand back the rest."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether this process takes work now: /health/ready and `cpw_worker_ready`."""

    @property
    def alive(self) -> bool:
        """False when only a restart can help (/health/live answers 503 and the kubelet restarts the pod)."""
        return True

    @abc.abstractmethod
    async def process_job(self, job: Job) -> Any:
        """Do one job and return its result; raise RetryableError / PermanentError when it fails."""

    def status(self) -> dict[str, Any]:
        """What /status and /health report besides readiness."""
        return {"worker_id": self.worker_id, "role": type(self).__name__, "ready": self.ready}


def load_role(spec: str) -> type[WorkerRole]:
    """`module:Class` of a WorkerRole subclass; ValueError saying what is wrong otherwise."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not module:Class")
    try:
        role = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load {spec!r}: {exc}") from None
    if not (isinstance(role, type) and issubclass(role, WorkerRole)):
        raise ValueError(f"{spec!r} is not a WorkerRole subclass")
    return role
