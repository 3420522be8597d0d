"""controlplane-workers: offload resource provider operations to a fleet of workers."""

__version__ = "0.1.0"

from .errors import BrokerUnavailable, PermanentError, RetryableError, UnroutableJob  # noqa: E402
from .fleet import WorkerRegistry, WorkerRole  # noqa: E402
from .models import Job, JobError, JobEvent, JobResult, JobStatus, Operation, ResourceRequest  # noqa: E402
from .offloading import OffloadingProviderRegistry, OffloadResponse, WaitingOffloadingProviderRegistry  # noqa: E402
from .providers import ResourceProvider, ResourceProviderRegistry  # noqa: E402
from .queue import JobQueue  # noqa: E402
from .settings import Settings, load_settings  # noqa: E402
from .worker import ProviderWorker  # noqa: E402

__all__ = [
    "BrokerUnavailable",
    "Job",
    "JobError",
    "JobEvent",
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
