"""The API adapter's settings: the core's Settings (broker, topology, logs, ops port) plus `CPW_API_*`.

They live here so that the core package, and a worker image built from it, knows nothing of the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from controlplane_workers.settings import Settings, env_alias, or_exit, read_settings


class ApiSettings(Settings):
    """What `cpw api` and `cpw dev` read. docs/configuration.md is generated from it."""

    secret_files: ClassVar[dict[str, str]] = {**Settings.secret_files, "postgres_url": "POSTGRES_URL"}

    # -- API adapter
    api_host: str = Field("0.0.0.0", validation_alias=env_alias("API_HOST"), description="Address the API listens on.")
    api_port: int = Field(
        8000, ge=0, le=65535, validation_alias=env_alias("API_PORT"), description="The API's public port."
    )
    api_tokens_file: Path | None = Field(
        None,
        validation_alias=env_alias("API_TOKENS_FILE"),
        description="JSON or YAML mapping bearer token -> tenant (mounted from a Secret).",
    )
    api_max_body_bytes: int = Field(
        1_048_576,
        ge=1,
        validation_alias=env_alias("API_MAX_BODY_BYTES"),
        description="Largest request body the API accepts; larger ones get 413.",
    )
    api_retry_after: int = Field(
        2,
        ge=1,
        validation_alias=env_alias("API_RETRY_AFTER"),
        description="Seconds clients are told to wait before polling again (Retry-After).",
    )
    api_tenant_max_queued: int = Field(
        10_000,
        ge=1,
        validation_alias=env_alias("API_TENANT_MAX_QUEUED"),
        description="Jobs one tenant may have queued or running; more get 429.",
    )
    api_tenant_rate: float = Field(
        100.0,
        ge=0,
        validation_alias=env_alias("API_TENANT_RATE"),
        description="Jobs a second one tenant may submit to one API replica, on average (a token bucket); more get "
        "429 with Retry-After. Per replica: N replicas admit N times as many. 0 turns the limit off.",
    )
    api_tenant_burst: int = Field(
        200,
        ge=1,
        validation_alias=env_alias("API_TENANT_BURST"),
        description="Jobs one tenant may submit at once to one API replica before CPW_API_TENANT_RATE paces it "
        "(the bucket's size).",
    )
    api_index_max_jobs: int = Field(
        1_000_000,
        ge=100,
        validation_alias=env_alias("API_INDEX_MAX_JOBS"),
        description="Jobs the status index keeps in memory; over it the oldest finished jobs are evicted.",
    )
    api_index_max_bytes: int | None = Field(
        None,
        ge=1_000_000,
        validation_alias=env_alias("API_INDEX_MAX_BYTES"),
        description="Bytes the status index may hold; over it the oldest finished jobs are evicted (404 "
        "OperationExpired). Default: half of the memory limit above a 96 MiB baseline.",
    )
    api_memory_limit_bytes: int | None = Field(
        None,
        ge=1,
        validation_alias=env_alias("API_MEMORY_LIMIT_BYTES"),
        description="The container's memory limit (the chart sets it with the downward API); default: the "
        "cgroup's limit. Sizes CPW_API_INDEX_MAX_BYTES when that is unset.",
    )
    api_idempotency_window: float = Field(
        86_400.0,
        gt=0,
        validation_alias=env_alias("API_IDEMPOTENCY_WINDOW"),
        description="Seconds an Idempotency-Key keeps answering with the same operation.",
    )
    api_max_wait: float = Field(
        60.0,
        ge=0,
        validation_alias=env_alias("API_MAX_WAIT"),
        description="Longest ?wait= / Prefer: wait= the API honours, in seconds.",
    )
    api_sync_timeout: float = Field(
        5.0,
        gt=0,
        le=300,
        validation_alias=env_alias("API_SYNC_TIMEOUT"),
        description="Seconds a resource or collection GET waits for its offloaded get/list job before it "
        "answers 504 GatewayTimeout + Retry-After (the job still runs). ARM clients expect a GET to answer "
        "synchronously.",
    )
    api_max_connections: int = Field(
        1000,
        ge=2,
        validation_alias=env_alias("API_MAX_CONNECTIONS"),
        description="Concurrent connections of the API port past which requests answer 503 (long-polls hold one "
        "each for up to CPW_API_MAX_WAIT).",
    )
    api_public_url: str | None = Field(
        None,
        validation_alias=env_alias("API_PUBLIC_URL"),
        description="Base URL for Location headers (behind an ingress); default: from the request.",
    )
    api_allow_anonymous: bool = Field(
        False,
        validation_alias=env_alias("API_ALLOW_ANONYMOUS"),
        description="Serve without tokens when CPW_API_TOKENS_FILE is unset (cpw dev does).",
    )
    # -- operation store
    api_store: Literal["stream", "postgresql"] = Field(
        "stream",
        validation_alias=env_alias("API_STORE"),
        description="Where the API looks up operations: `stream` (each replica indexes provider.results in "
        "memory) or `postgresql` (the projector, `cpw indexer`, writes them to PostgreSQL; replicas hold no index).",
    )
    postgres_url: str | None = Field(
        None,
        validation_alias=env_alias("POSTGRES_URL"),
        description="PostgreSQL DSN of the operation store (postgresql://user:password@host/db); prefer "
        "CPW_POSTGRES_URL_FILE (a mounted Secret). Never logged with its password.",
    )
    indexer_batch_messages: int = Field(
        32,
        ge=1,
        validation_alias=env_alias("INDEXER_BATCH_MESSAGES"),
        description="Stream messages `cpw indexer` writes per PostgreSQL transaction (one carries up to 512 events).",
    )
    indexer_backlog_messages: int = Field(
        512,
        ge=1,
        validation_alias=env_alias("INDEXER_BACKLOG_MESSAGES"),
        description="Most stream messages `cpw indexer` holds received and not yet committed: at this many it stops "
        "reading the stream until PostgreSQL catches up (the rest wait in RabbitMQ). Bounds its memory while "
        "PostgreSQL is slow or down: a message of 512 small events is ~90 KB, so 512 hold ~45 MB.",
    )
    operation_retention: int = Field(
        30,
        ge=1,
        le=3650,
        validation_alias=env_alias("OPERATION_RETENTION"),
        description="Days the PostgreSQL operation store keeps a job (`30d` or `30`): `cpw indexer` drops each "
        "day's partition once the whole day is older; a job past it answers 404 OperationNotFound.",
    )

    @field_validator("operation_retention", mode="before")
    @classmethod
    def _days(cls, value: object) -> object:
        """ "30d" or "30D" -> 30: the unit is days, as partitions are daily."""
        if isinstance(value, str) and value[-1:] in ("d", "D"):
            return value[:-1]
        return value


def load_api_settings(**overrides: object) -> ApiSettings:
    """Read the environment; SettingsError with one readable line when a value is bad."""
    return read_settings(ApiSettings, overrides)


def api_settings_or_exit(**overrides: object) -> ApiSettings:
    """For the CLI: a bad setting prints one line to stderr and exits with code 2."""
    return or_exit(ApiSettings, overrides)
