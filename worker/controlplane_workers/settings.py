"""Configuration from the environment: `CPW_*`, the seed's names, and secrets from files.

Kubernetes mounts Secrets as files, so every secret setting also reads from `<NAME>_FILE`.
A bad value stops the process with exit code 2 and one line naming the variable.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .redact import redact_url


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _env(name: str, *seed_names: str) -> AliasChoices:
    return AliasChoices(f"CPW_{name}", *seed_names)


class Settings(BaseSettings):
    """Every knob of the worker, the API and the CLI. docs/configuration.md is generated from it."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # -- broker
    rabbitmq_url: str = Field(
        "amqp://localhost:5672/",
        validation_alias=_env("RABBITMQ_URL", "RABBITMQ_URL"),
        description="Broker URL: amqp:// or amqps:// for RabbitMQ, memory:// for the embedded broker.",
    )
    rabbitmq_management_url: str | None = Field(
        None,
        validation_alias=_env("RABBITMQ_MANAGEMENT_URL"),
        description="RabbitMQ management API URL, for queue statistics from outside a connection.",
    )
    queue_type: Literal["classic", "quorum"] = Field(
        "classic", validation_alias=_env("QUEUE_TYPE"), description="Type of the job queue."
    )
    queue_delivery_limit: int = Field(
        20,
        ge=1,
        validation_alias=_env("QUEUE_DELIVERY_LIMIT"),
        description="Quorum queues only: deliveries after which a message that keeps crashing workers is "
        "dead-lettered by the broker. A queue argument, so every process must agree on it.",
    )
    exchange: str = Field(
        "provider.exchange",
        validation_alias=_env("EXCHANGE"),
        description="Topic exchange jobs are published to (routing key <namespace>.<type>.<operation>).",
    )
    jobs_queue: str = Field(
        "provider.jobs",
        validation_alias=_env("JOBS_QUEUE"),
        description="The job queue workers consume; the chart feeds the same value to KEDA's trigger.",
    )
    results_stream: str = Field(
        "provider.results",
        validation_alias=_env("RESULTS_STREAM"),
        description="Stream of Accepted records and job events that every reader replays.",
    )
    control_stream: str = Field(
        "provider.control",
        validation_alias=_env("CONTROL_STREAM"),
        description="Stream of cancel requests that workers follow.",
    )
    heartbeat_exchange: str = Field(
        "provider.heartbeats",
        validation_alias=_env("HEARTBEAT_EXCHANGE"),
        description="Fanout exchange for worker heartbeats (the fleet view).",
    )
    results_max_age: str = Field(
        "24h",
        pattern=r"^[0-9]+[YMDhms]$",
        validation_alias=_env("RESULTS_MAX_AGE"),
        description="How long the results stream keeps events (RabbitMQ x-max-age, e.g. 24h, 7D).",
    )
    results_max_bytes: int = Field(
        2_000_000_000,
        ge=1_000_000,
        validation_alias=_env("RESULTS_MAX_BYTES"),
        description="Size cap of the results stream in bytes.",
    )
    accepted_on_stream: bool = Field(
        True,
        validation_alias=_env("ACCEPTED_ON_STREAM"),
        description="Submitters append an Accepted record to the results stream once the job is confirmed, "
        "so every API replica knows the job (batched: one stream message carries many records).",
    )
    publish_timeout: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("PUBLISH_TIMEOUT"),
        description="Seconds to wait for the broker to confirm a message before giving up.",
    )

    # -- worker
    worker_id: str = Field(
        default_factory=_default_worker_id,
        validation_alias=_env("WORKER_ID", "WORKER_ID"),
        description="Name of this process in logs, events and the fleet view (default: hostname-pid).",
    )
    providers: str | None = Field(
        None,
        validation_alias=_env("PROVIDERS"),
        description="module:attr of a registry, a provider or a factory; entry points are loaded too.",
    )
    max_concurrent_jobs: int = Field(
        10,
        ge=1,
        le=10_000,
        validation_alias=_env("MAX_CONCURRENT_JOBS"),
        description="Jobs a worker runs at once; also its prefetch.",
    )
    max_attempts: int = Field(
        5,
        ge=1,
        le=100,
        validation_alias=_env("MAX_ATTEMPTS"),
        description="Attempts before a failing job is dead-lettered (a job may ask for its own).",
    )
    job_timeout: float = Field(
        300.0,
        gt=0,
        validation_alias=_env("JOB_TIMEOUT"),
        description="Seconds one attempt may take before it is cancelled and retried (a job may set its own).",
    )
    drain_timeout: float = Field(
        30.0,
        ge=0,
        validation_alias=_env("DRAIN_TIMEOUT"),
        description="Seconds running jobs get to finish after SIGTERM; the rest are requeued.",
    )
    retry_base_delay: float = Field(
        1.0,
        gt=0,
        validation_alias=_env("RETRY_BASE_DELAY"),
        description="Seconds before the second attempt; doubles with each attempt.",
    )
    retry_max_delay: float = Field(
        300.0,
        gt=0,
        validation_alias=_env("RETRY_MAX_DELAY"),
        description="Cap of the retry delay in seconds.",
    )
    retry_jitter: float = Field(
        0.25,
        ge=0,
        lt=1,
        validation_alias=_env("RETRY_JITTER"),
        description="Spread of each retry delay, as a fraction (0.25 = +-25%).",
    )
    running_event_delay: float = Field(
        0.05,
        ge=0,
        validation_alias=_env("RUNNING_EVENT_DELAY"),
        description="A job that ends sooner goes Accepted -> terminal without a Running event.",
    )
    heartbeat_interval: float = Field(
        5.0,
        gt=0,
        validation_alias=_env("HEARTBEAT_INTERVAL"),
        description="Seconds between worker heartbeats; a worker is dropped after 3 missed.",
    )
    cancel_window: float = Field(
        3600.0,
        gt=0,
        validation_alias=_env("CANCEL_WINDOW"),
        description="How far back a starting worker reads cancel requests.",
    )

    # -- ops port and logs
    health_host: str = Field(
        "0.0.0.0",
        validation_alias=_env("HEALTH_HOST"),
        description="Address of the ops port (health, status, metrics).",
    )
    health_port: int = Field(
        8001,
        ge=0,
        le=65535,
        validation_alias=_env("HEALTH_PORT", "HEALTH_CHECK_PORT"),
        description="The ops port: /health/live, /health/ready, /health, /status, /metrics.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO",
        validation_alias=_env("LOG_LEVEL", "LOG_LEVEL"),
        description="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    )
    log_format: Literal["json", "text"] = Field(
        "json",
        validation_alias=_env("LOG_FORMAT"),
        description="json (one object per line, with job_id and worker_id) or text.",
    )

    # -- API adapter
    api_host: str = Field("0.0.0.0", validation_alias=_env("API_HOST"), description="Address the API listens on.")
    api_port: int = Field(8000, ge=0, le=65535, validation_alias=_env("API_PORT"), description="The API's public port.")
    api_tokens_file: Path | None = Field(
        None,
        validation_alias=_env("API_TOKENS_FILE"),
        description="JSON or YAML mapping bearer token -> tenant (mounted from a Secret).",
    )
    api_max_body_bytes: int = Field(
        1_048_576,
        ge=1,
        validation_alias=_env("API_MAX_BODY_BYTES"),
        description="Largest request body the API accepts; larger ones get 413.",
    )
    api_retry_after: int = Field(
        2,
        ge=1,
        validation_alias=_env("API_RETRY_AFTER"),
        description="Seconds clients are told to wait before polling again (Retry-After).",
    )
    api_tenant_max_queued: int = Field(
        10_000,
        ge=1,
        validation_alias=_env("API_TENANT_MAX_QUEUED"),
        description="Jobs one tenant may have queued or running; more get 429.",
    )
    api_index_max_jobs: int = Field(
        1_000_000,
        ge=100,
        validation_alias=_env("API_INDEX_MAX_JOBS"),
        description="Jobs the status index keeps in memory (about 2 KB each); the oldest are evicted.",
    )
    api_idempotency_window: float = Field(
        86_400.0,
        gt=0,
        validation_alias=_env("API_IDEMPOTENCY_WINDOW"),
        description="Seconds an Idempotency-Key keeps answering with the same operation.",
    )
    api_max_wait: float = Field(
        60.0,
        ge=0,
        validation_alias=_env("API_MAX_WAIT"),
        description="Longest ?wait= / Prefer: wait= the API honours, in seconds.",
    )
    api_public_url: str | None = Field(
        None,
        validation_alias=_env("API_PUBLIC_URL"),
        description="Base URL for Location headers (behind an ingress); default: from the request.",
    )
    api_allow_anonymous: bool = Field(
        False,
        validation_alias=_env("API_ALLOW_ANONYMOUS"),
        description="Serve without tokens when CPW_API_TOKENS_FILE is unset (cpw dev does).",
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

    def safe_dump(self) -> dict[str, object]:
        """Settings as they may be logged: URLs without passwords."""
        data = self.model_dump(mode="json")
        for key in ("rabbitmq_url", "rabbitmq_management_url"):
            if data.get(key):
                data[key] = redact_url(data[key])
        return data


SECRET_FILES = {"rabbitmq_url": "RABBITMQ_URL", "rabbitmq_management_url": "RABBITMQ_MANAGEMENT_URL"}


def _secrets_from_files(environ: dict[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for field, name in SECRET_FILES.items():
        path = environ.get(f"CPW_{name}_FILE")
        if path:
            try:
                values[field] = Path(path).read_text().strip()
            except OSError as exc:
                raise SettingsError(f"CPW_{name}_FILE: cannot read {path}: {exc.strerror}") from exc
    return values


class SettingsError(Exception):
    """One line naming the variable and what is wrong with it."""


def _env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"CPW_{field.upper()}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise SettingsError with one readable line when a value is bad."""
    try:
        # values are validated by the model itself: that is the point of the call
        return Settings(**{**_secrets_from_files(dict(os.environ)), **overrides})  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        name = _env_name(field) if field in Settings.model_fields else field
        raise SettingsError(f"{name}: {error['msg']}") from None


def settings_or_exit(**overrides: object) -> Settings:
    """For the CLI: a bad setting prints one line to stderr and exits with code 2."""
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        print(f"cpw: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
