"""controlplane-workers: offload resource provider operations to a fleet of workers."""

from ._version import __version__
from .errors import BrokerUnavailable, PermanentError, RetryableError, UnroutableJob
from .fleet import FleetRole, WorkerRegistry
from .models import Job, JobError, JobEvent, JobResult, JobStatus, Operation, ResourceRequest
from .offloading import OffloadingProviderRegistry, OffloadResponse, WaitingOffloadingProviderRegistry
from .providers import ResourceProvider, ResourceProviderRegistry
from .queue import JobQueue
from .role import WorkerRole
from .settings import Settings, load_settings
from .status import JobPage
from .worker import ProviderWorker

__all__ = [
    "BrokerUnavailable",
    "FleetRole",
    "Job",
    "JobError",
    "JobEvent",
    "JobPage",
    "JobQueue",
    "JobResult",
    "JobStatus",
    "OffloadResponse",
    "OffloadingProviderRegistry",
    "Operation",
    "PermanentError",
    "ProviderWorker",
    "ResourceProvider",
    "ResourceProviderRegistry",
    "ResourceRequest",
    "RetryableError",
    "Settings",
    "UnroutableJob",
    "WaitingOffloadingProviderRegistry",
    "WorkerRegistry",
    "WorkerRole",
    "__version__",
    "load_settings",
]
