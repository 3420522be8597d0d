"""Configuration from the environment: `CPW_*`, the seed's names, and secrets from files.

Kubernetes mounts Secrets as files, so every secret setting also reads from `<NAME>_FILE`.
A bad value stops the process with exit code 2 and one line naming the variable.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .redact import redact_url
from .topology import MAX_CASCADE_DELAY


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def env_alias(name: str, *seed_names: str) -> AliasChoices:
    """`CPW_<name>` first (the name the docs show), then the seed's names for the same setting."""
    return AliasChoices(f"CPW_{name}", *seed_names)


# Seconds to read a record back (CPW_RESULTS_READBACK) when the streams are replicated: a confirmed batch is
# read back within milliseconds; 5 s leaves room for a loaded node without republishing in vain.
DEFAULT_READBACK = 5.0


class Settings(BaseSettings):
    """Every knob of the worker, the SDK and the CLI; the API adds its own (controlplane_api.settings).

    docs/configuration.md is generated from both models."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)
    # field -> CPW_ name of the secrets that may also come from a file (CPW_<name>_FILE, a mounted
    # Secret) and that safe_dump redacts; the API adds its own.
    secret_files: ClassVar[dict[str, str]] = {
        "rabbitmq_url": "RABBITMQ_URL",
        "rabbitmq_management_url": "RABBITMQ_MANAGEMENT_URL",
    }

    # -- broker
    rabbitmq_url: str = Field(
        "amqp://localhost:5672/",
        validation_alias=env_alias("RABBITMQ_URL", "RABBITMQ_URL"),
        description="Broker URL: amqp:// or amqps:// for RabbitMQ, memory:// for the embedded broker.",
    )
    rabbitmq_management_url: str | None = Field(
        None,
        validation_alias=env_alias("RABBITMQ_MANAGEMENT_URL"),
        description="RabbitMQ management API URL, for queue statistics from outside a connection.",
    )
    queue_type: Literal["classic", "quorum"] = Field(
        "classic", validation_alias=env_alias("QUEUE_TYPE"), description="Type of the job queue."
    )
    queue_delivery_limit: int = Field(
        20,
        ge=1,
        validation_alias=env_alias("QUEUE_DELIVERY_LIMIT"),
        description="Times a job may be lost with its worker (a crash, a kill, a lost connection); its next "
        "delivery is dead-lettered instead of run (reason `delivery-limit`), and the job ends Failed "
        "(DeliveryLimitExceeded): such a job runs at most this many times. A quorum queue counts them "
        "(x-delivery-count; x-delivery-limit is a queue argument, so every process must agree on it, and the broker "
        "counts the workers' hand-backs too); on a classic queue the workers do (header `x-cpw-delivery-count`).",
    )
    dlq_max_length: int = Field(
        10_000,
        ge=1,
        validation_alias=env_alias("DLQ_MAX_LENGTH"),
        description="Most messages the dead-letter queue holds (x-max-length); past it CPW_DLQ_OVERFLOW applies. "
        "A queue argument, so every process must agree on it.",
    )
    dlq_max_age: int = Field(
        7 * 24 * 3600,
        ge=1,
        validation_alias=env_alias("DLQ_MAX_AGE"),
        description="Seconds a dead letter is kept (x-message-ttl); older ones are dropped by the broker.",
    )
    dlq_overflow: Literal["drop-head", "reject-publish"] = Field(
        "drop-head",
        validation_alias=env_alias("DLQ_OVERFLOW"),
        description="What a full dead-letter queue does (x-overflow): drop-head drops the oldest dead letter; "
        "reject-publish refuses the new one, and its job goes back to the job queue and runs again.",
    )
    stream_replicas: int = Field(
        0,
        ge=0,
        validation_alias=env_alias("STREAM_REPLICAS"),
        description="Nodes the results and control streams are replicated on when they are created "
        "(x-initial-cluster-size); 0 leaves it to the broker (RabbitMQ 3.10+: every node of the cluster). "
        "A stream argument: an existing stream refuses a different value.",
    )
    results_readback: float | None = Field(
        None,
        ge=0,
        validation_alias=env_alias("RESULTS_READBACK"),
        description="Read-your-write on the results stream: a worker acks a job only once it read its outcome "
        "back, a submitter publishes again an Accepted record missing from it. A record is missing once a later "
        "one of the same process was read; after this many seconds unread an empty probe follows it to tell; "
        "after 4 times as long the job goes back to the queue. Unset: 5 when CPW_STREAM_REPLICAS is above 1 "
        "(a cluster), else off; 0: off. Off in an API whose store is PostgreSQL (it reads no stream). A guard "
        "against a stream that confirmed writes and lost them as its leader stopped (RabbitMQ 3.10.8 in a "
        "rolling restart, docs/reliability.md).",
    )
    exchange: str = Field(
        "provider.exchange",
        validation_alias=env_alias("EXCHANGE"),
        description="Topic exchange jobs are published to (routing key <namespace>.<type>.<operation>).",
    )
    jobs_queue: str = Field(
        "provider.jobs",
        validation_alias=env_alias("JOBS_QUEUE"),
        description="The job queue workers consume; the chart feeds the same value to KEDA's trigger.",
    )
    results_stream: str = Field(
        "provider.results",
        validation_alias=env_alias("RESULTS_STREAM"),
        description="Stream of Accepted records and job events that every reader replays.",
    )
    control_stream: str = Field(
        "provider.control",
        validation_alias=env_alias("CONTROL_STREAM"),
        description="Stream of cancel requests that workers follow.",
    )
    heartbeat_exchange: str = Field(
        "provider.heartbeats",
        validation_alias=env_alias("HEARTBEAT_EXCHANGE"),
        description="Fanout exchange for worker heartbeats (the fleet view).",
    )
    results_max_age: str = Field(
        "24h",
        pattern=r"^[0-9]+[YMDhms]$",
        validation_alias=env_alias("RESULTS_MAX_AGE"),
        description="How long the results stream keeps events (RabbitMQ x-max-age, e.g. 24h, 7D).",
    )
    results_max_bytes: int = Field(
        2_000_000_000,
        ge=1_000_000,
        validation_alias=env_alias("RESULTS_MAX_BYTES"),
        description="Size cap of the results stream in bytes.",
    )
    accepted_on_stream: bool = Field(
        True,
        validation_alias=env_alias("ACCEPTED_ON_STREAM"),
        description="Submitters append an Accepted record to the results stream once the job is confirmed, "
        "so every API replica knows the job (batched: one stream message carries many records).",
    )
    publish_timeout: float = Field(
        10.0,
        gt=0,
        validation_alias=env_alias("PUBLISH_TIMEOUT"),
        description="Seconds to wait for the broker to confirm a message before giving up; also how long a "
        "cancel or close waits for an answer before a stopping process goes on without it.",
    )

    # -- worker
    worker_id: str = Field(
        default_factory=_default_worker_id,
        validation_alias=env_alias("WORKER_ID", "WORKER_ID"),
        description="Name of this process in logs, events and the fleet view (default: hostname-pid).",
    )
    providers: str | None = Field(
        None,
        validation_alias=env_alias("PROVIDERS"),
        description="module:attr of a registry, a provider or a factory; entry points are loaded too.",
    )
    worker_role: str | None = Field(
        None,
        validation_alias=env_alias("WORKER_ROLE"),
        description="module:Class of the WorkerRole this process runs (default: ProviderWorker, which consumes "
        "the job queue). A team's own role gets the same runtime, ops port, drain and metrics.",
    )
    max_concurrent_jobs: int = Field(
        10,
        ge=1,
        le=10_000,
        validation_alias=env_alias("MAX_CONCURRENT_JOBS"),
        description="Jobs a worker runs at once; also its prefetch.",
    )
    sync_threads: int | None = Field(
        None,
        ge=1,
        le=10_000,
        validation_alias=env_alias("SYNC_THREADS"),
        description="Threads for sync (plain def) provider methods (default: CPW_MAX_CONCURRENT_JOBS). A timed-out "
        "call keeps its thread until it returns; when every thread is held so, the worker turns unready and hands "
        "sync jobs back to the queue.",
    )
    max_attempts: int = Field(
        5,
        ge=1,
        le=100,
        validation_alias=env_alias("MAX_ATTEMPTS"),
        description="Attempts before a failing job is dead-lettered (a job may ask for its own).",
    )
    job_timeout: float = Field(
        300.0,
        gt=0,
        validation_alias=env_alias("JOB_TIMEOUT"),
        description="Seconds one attempt may take before it is cancelled and retried (a job may set its own).",
    )
    max_result_bytes: int = Field(
        262_144,
        ge=1024,
        validation_alias=env_alias("MAX_RESULT_BYTES"),
        description="Largest result a provider may return, in bytes of JSON. A larger one ends the job Failed "
        "with ResultTooLarge (not retried, not dead-lettered): every API replica keeps results in memory.",
    )
    drain_timeout: float = Field(
        30.0,
        ge=0,
        validation_alias=env_alias("DRAIN_TIMEOUT"),
        description="Seconds running jobs get to finish after SIGTERM; the rest are requeued.",
    )
    retry_base_delay: float = Field(
        1.0,
        gt=0,
        validation_alias=env_alias("RETRY_BASE_DELAY"),
        description="Seconds before the second attempt; doubles with each attempt.",
    )
    retry_max_delay: float = Field(
        300.0,
        gt=0,
        validation_alias=env_alias("RETRY_MAX_DELAY"),
        description="Cap of the retry delay in seconds.",
    )
    retry_jitter: float = Field(
        0.25,
        ge=0,
        lt=1,
        validation_alias=env_alias("RETRY_JITTER"),
        description="Spread of each retry delay, as a fraction (0.25 = +-25%).",
    )
    stuck_restart_after: float = Field(
        300.0,
        ge=0,
        validation_alias=env_alias("STUCK_RESTART_AFTER"),
        description="Seconds every sync provider thread may stay stuck in a call whose job ended before "
        "/health/live fails and the kubelet restarts the worker (unready from the first moment); 0: never.",
    )
    running_event_delay: float = Field(
        0.05,
        ge=0,
        validation_alias=env_alias("RUNNING_EVENT_DELAY"),
        description="A job that ends sooner goes Accepted -> terminal without a Running event.",
    )
    heartbeat_interval: float = Field(
        5.0,
        gt=0,
        validation_alias=env_alias("HEARTBEAT_INTERVAL"),
        description="Seconds between worker heartbeats; a worker is dropped after 3 missed.",
    )
    job_max_delay: float = Field(
        86_400.0,
        gt=0,
        le=MAX_CASCADE_DELAY,
        validation_alias=env_alias("JOB_MAX_DELAY"),
        description="Longest delay (seconds) a delayed job may ask for; longer ones are refused (the API answers "
        "400). At most CPW_RESULTS_MAX_AGE: a waiting job's Accepted record and cancel requests must outlive its wait.",
    )
    cancel_window: float = Field(
        3600.0,
        gt=0,
        validation_alias=env_alias("CANCEL_WINDOW"),
        description="How far back a starting worker reads cancel requests of jobs that are not waiting (their "
        "requests count only while the job is queued or running), and how long after a delayed job's start time "
        "its request is kept.",
    )
    cancel_memory: int = Field(
        100_000,
        ge=1,
        validation_alias=env_alias("CANCEL_MEMORY"),
        description="Most cancel requests a worker keeps of each kind: the latest N for queued or running jobs, "
        "and N for delayed jobs still waiting (past it, the one that starts last is dropped, counted in "
        "cpw_worker_cancel_requests_dropped_total, and such a job is looked up on the control stream before it "
        "runs). About 250 bytes per request of a queued or running job and 420 per waiting one (~65 MiB with both "
        "kinds full at the default).",
    )

    # -- ops port and logs
    http_max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        validation_alias=env_alias("HTTP_MAX_HEADER_BYTES"),
        description="Most bytes of request line and headers either port reads before it answers 431 and closes.",
    )
    http_header_timeout: float = Field(
        10.0,
        gt=0,
        validation_alias=env_alias("HTTP_HEADER_TIMEOUT"),
        description="Seconds a client has to send its request line and headers; then 408 and the connection closes.",
    )
    ops_max_connections: int = Field(
        64,
        ge=2,
        validation_alias=env_alias("OPS_MAX_CONNECTIONS"),
        description="Concurrent connections of the ops port past which requests answer 503 (probes and scrapes "
        "need a few).",
    )
    health_host: str = Field(
        "0.0.0.0",
        validation_alias=env_alias("HEALTH_HOST"),
        description="Address of the ops port (health, status, metrics).",
    )
    health_port: int = Field(
        8001,
        ge=0,
        le=65535,
        validation_alias=env_alias("HEALTH_PORT", "HEALTH_CHECK_PORT"),
        description="The ops port: /health/live, /health/ready, /health, /status, /metrics.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO",
        validation_alias=env_alias("LOG_LEVEL", "LOG_LEVEL"),
        description="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    )
    log_format: Literal["json", "text"] = Field(
        "json",
        validation_alias=env_alias("LOG_FORMAT"),
        description="json (one object per line, with job_id and worker_id) or text.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("rabbitmq_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if "://" not in value or scheme not in {"amqp", "amqps", "memory"}:
            raise ValueError("must start with amqp://, amqps:// or memory://")
        return value

    @property
    def readback_seconds(self) -> float:
        """CPW_RESULTS_READBACK as it applies: 0 (off) on a single stream replica, where no leader can change."""
        if self.results_readback is not None:
            return self.results_readback
        return DEFAULT_READBACK if self.stream_replicas > 1 else 0.0

    @model_validator(mode="after")
    def _delay_within_retention(self) -> Settings:
        retention = retention_seconds(self.results_max_age)
        if self.job_max_delay > retention:
            raise ValueError(
                f"CPW_JOB_MAX_DELAY ({self.job_max_delay:g} s) is longer than CPW_RESULTS_MAX_AGE "
                f"({self.results_max_age}): a delayed job's record and cancel requests would leave the streams "
                "before it starts"
            )
        return self

    def safe_dump(self) -> dict[str, object]:
        """Settings as they may be logged: URLs without passwords."""
        data = self.model_dump(mode="json")
        for key in self.secret_files:
            if data.get(key):
                data[key] = redact_url(data[key])
        return data


SECRET_FILES = Settings.secret_files
_UNITS = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}


def retention_seconds(max_age: str) -> float:
    """RabbitMQ's x-max-age ("24h", "7D") in seconds."""
    match = re.fullmatch(r"([0-9]+)([YMDhms])", max_age)
    if not match:
        raise ValueError(f"not a stream max-age: {max_age!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _secrets_from_files(environ: dict[str, str], files: dict[str, str] = SECRET_FILES) -> dict[str, str]:
    values: dict[str, str] = {}
    for field, name in files.items():
        path = environ.get(f"CPW_{name}_FILE")
        if path:
            try:
                values[field] = Path(path).read_text().strip()
            except OSError as exc:
                raise SettingsError(f"CPW_{name}_FILE: cannot read {path}: {exc.strerror}") from exc
    return values


class SettingsError(Exception):
    """One line naming the variable and what is wrong with it."""


S = TypeVar("S", bound=Settings)


def _env_name(model: type[Settings], field: str) -> str:
    alias = model.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"CPW_{field.upper()}"


def read_settings(model: type[S], overrides: dict[str, object]) -> S:
    """Read `model` (Settings or a subclass) from the environment; SettingsError names a bad value.

    An override that is not a field of `model` is an error: extra="ignore" would drop it silently."""
    unknown = sorted(set(overrides) - set(model.model_fields))
    if unknown:
        raise SettingsError(f"{unknown[0]}: not a setting of {model.__name__}")
    try:
        # values are validated by the model itself: that is the point of the call
        return model(**{**_secrets_from_files(dict(os.environ), model.secret_files), **overrides})  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        if not error["loc"]:  # a rule across settings: its message names them
            raise SettingsError(str(error["msg"]).removeprefix("Value error, ")) from None
        field = str(error["loc"][0])
        name = _env_name(model, field) if field in model.model_fields else field
        raise SettingsError(f"{name}: {error['msg']}") from None


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise SettingsError with one readable line when a value is bad."""
    return read_settings(Settings, overrides)


def or_exit(model: type[S], overrides: dict[str, object]) -> S:
    """For the CLI: a bad setting prints one line to stderr and exits with code 2."""
    try:
        return read_settings(model, overrides)
    except SettingsError as exc:
        print(f"cpw: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def settings_or_exit(**overrides: object) -> Settings:
    """`or_exit` for the core's Settings."""
    return or_exit(Settings, overrides)
