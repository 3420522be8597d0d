"""Reading the results stream: one parser for every reader of it.

The status index (status.py) and the API's PostgreSQL projector read the same messages: bare job
copies, single events, and group-committed batches of events (events.py). Both hand this parser a
`RecordSink`, so a new record layout is taught to every reader at once. Events are read as plain data,
not pydantic models: this is the hot path of a replay.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from .broker.base import KIND, REDRIVE, StreamMessage
from .events import BATCH
from .models import EVENT_STATUS, EventType, Job, JobError, JobStatus, Operation

# Stream messages with this kind are position markers a reader publishes for itself (the API
# adapter publishes one at start and is ready once it has read it back); readers skip them.
MARKER = "marker"
# What a malformed message raises in the parser; a reader counts it and goes on.
MALFORMED = (ValidationError, orjson.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError)


class RecordSink(Protocol):
    """What a reader does with each record."""

    def record_accepted(
        self,
        job_id: str,
        namespace: str,
        resource_type: str,
        operation: Operation,
        resource_name: str | None,
        tenant: str | None,
        priority: int,
        submitted_at: float | None,
        *,
        redrive: bool = False,
        not_before: float | None = None,
    ) -> None: ...

    def record_event(
        self,
        job_id: str,
        status: JobStatus,
        at: float,
        attempt: int,
        worker_id: str | None,
        result: Any,
        error: JobError | None,
        tenant: str | None = None,
    ) -> None: ...

    def remember_key(self, key: str, job_id: str, fingerprint: str, at: float) -> None: ...


def read_message(message: StreamMessage, sink: RecordSink) -> int:
    """Hand the records of one stream message to `sink`; the number of events it held (0: a marker).

    Raises one of MALFORMED for a message that is not a record; records before the bad one in a
    batch have been handed over."""
    kind = message.headers.get(KIND)
    if kind == MARKER:
        return 0
    if kind == BATCH:
        items = orjson.loads(message.body)
        for item in items:
            read_event(item, sink)
        return len(items)
    if kind == "job":  # a bare job message (a binding of the stream to the job exchange)
        job = Job.model_validate_json(message.body)
        sink.record_accepted(
            job.id,
            job.provider_namespace,
            job.resource_type,
            job.operation,
            job.request.resource_name,
            job.tenant,
            job.priority,
            job.submitted_at,
            redrive=bool(message.headers.get(REDRIVE)),
            not_before=job.not_before,
        )
        return 1
    read_event(orjson.loads(message.body), sink)
    return 1


def read_event(data: dict[str, Any], sink: RecordSink) -> None:
    """One event as written by this project (events.py)."""
    job = data.get("job")
    if job is not None:
        key = data.get("idempotency")
        if key is not None:
            sink.remember_key(key["key"], job["id"], key["fingerprint"], float(data["at"]))
        sink.record_accepted(
            job["id"],
            job["provider_namespace"],
            job["resource_type"],
            Operation(job["operation"]),
            (job.get("request") or {}).get("resource_name"),
            job.get("tenant"),
            job.get("priority", 5),
            job.get("submitted_at"),
            redrive=bool(data.get("redrive")),
            not_before=job.get("not_before"),
        )
        return
    error = data.get("error")
    sink.record_event(
        data["job_id"],
        EVENT_STATUS[EventType(data["type"])],
        float(data["at"]),
        int(data.get("attempt", 1)),
        data.get("worker_id"),
        data.get("result"),
        JobError.model_construct(**error) if error else None,
        data.get("tenant"),
    )
