"""One batch of stream messages folded into one row change per job, and the SQL that merges it.

The fold (a `RecordSink`, fed by the core's parser) applies a batch's records in order, as the status
index would; the upsert then merges each job's change into its stored row with the same rules, in SQL,
so a row written meanwhile by the API (its Accepted record) is merged, not overwritten:
- states only move forward: Accepted -> Running -> a terminal state; the first terminal state wins;
  a terminal event for a job already ended counts in `duplicates`;
- a redriven job (an operator sent a dead letter round again) starts afresh (`redrives` counts them).
"""

from __future__ import annotations

from typing import Any

import orjson

from controlplane_workers.models import JobError, JobStatus, Operation

COLUMNS = (
    "job_id status terminal namespace resource_type operation resource_name tenant priority attempts worker_id "
    "submitted_at not_before started_at finished_at result error_code error_message idem_key fingerprint duplicates "
    "redrives"
).split()
TYPES = (
    "text text bool text text text text text int2 int4 text float8 float8 float8 float8 jsonb text text text text int4 "
    "int4"
).split()
_KEEP_IF_ENDED = ("attempts", "worker_id", "started_at", "finished_at", "result", "error_code", "error_message")

# t: the stored row, e: this batch's change (EXCLUDED). A redriven change replaces the row.
_MERGE = {
    "status": "CASE WHEN t.terminal OR (t.status <> 'Accepted' AND NOT e.terminal) THEN t.status ELSE e.status END",
    "terminal": "t.terminal OR e.terminal",
    "namespace": "COALESCE(e.namespace, t.namespace)",
    "resource_type": "COALESCE(t.resource_type, e.resource_type)",
    "operation": "COALESCE(t.operation, e.operation)",
    "resource_name": "COALESCE(t.resource_name, e.resource_name)",
    "tenant": "COALESCE(t.tenant, e.tenant)",
    "priority": "COALESCE(t.priority, e.priority)",
    "submitted_at": "COALESCE(e.submitted_at, t.submitted_at)",
    "not_before": "COALESCE(t.not_before, e.not_before)",
    "idem_key": "COALESCE(e.idem_key, t.idem_key)",
    "fingerprint": "COALESCE(e.fingerprint, t.fingerprint)",
    "attempts": "GREATEST(t.attempts, e.attempts)",
    "worker_id": "COALESCE(e.worker_id, t.worker_id)",
    "started_at": "COALESCE(t.started_at, e.started_at)",
    "finished_at": "e.finished_at",
    "result": "e.result",
    "error_code": "COALESCE(e.error_code, t.error_code)",
    "error_message": "CASE WHEN e.error_code IS NULL THEN t.error_message ELSE e.error_message END",
    # e.duplicates counts the batch's own extra terminal events; if the row had ended, e's first one is extra too
    "duplicates": "t.duplicates + e.duplicates + CASE WHEN t.terminal AND e.terminal THEN 1 ELSE 0 END",
}


def _set(column: str) -> str:
    merged = _MERGE[column]
    if column in _KEEP_IF_ENDED:
        merged = f"CASE WHEN t.terminal THEN t.{column} ELSE {merged} END"
    return f"{column} = CASE WHEN e.redrives > 0 THEN e.{column} ELSE {merged} END"


_SETS = [_set(c) for c in COLUMNS[1:-1]] + ["redrives = t.redrives + e.redrives"]
UPSERT = (
    f"INSERT INTO cpw_jobs AS t ({', '.join(COLUMNS)}) "
    f"SELECT * FROM unnest({', '.join(f'${i + 1}::{ty}[]' for i, ty in enumerate(TYPES))}) "
    f"ON CONFLICT (job_id) DO UPDATE SET {', '.join(_SETS).replace('e.', 'EXCLUDED.')}"
)
# The API's own Accepted row for a job it just published: never changes a row the projector wrote.
INSERT_ACCEPTED = f"INSERT INTO cpw_jobs ({', '.join(COLUMNS)}) SELECT * FROM unnest({', '.join(f'${i + 1}::{ty}[]' for i, ty in enumerate(TYPES))}) ON CONFLICT (job_id) DO NOTHING"  # noqa: E501


class Change:
    """One job's change in a batch: the fold of its records, in stream order (a row of COLUMNS)."""

    __slots__ = tuple(COLUMNS)

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.status: str = JobStatus.ACCEPTED.value
        self.terminal = False
        self.namespace: str | None = None
        self.resource_type: str | None = None
        self.operation: str | None = None
        self.resource_name: str | None = None
        self.tenant: str | None = None
        self.priority: int | None = None
        self.attempts = 0
        self.worker_id: str | None = None
        self.submitted_at: float | None = None
        self.not_before: float | None = None  # a delayed job's earliest start
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.result: str | None = None  # encoded JSON
        self.error_code: str | None = None
        self.error_message: str | None = None
        self.idem_key: str | None = None
        self.fingerprint: str | None = None
        self.duplicates = 0
        self.redrives = 0

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in COLUMNS)


class BatchFold:
    """A RecordSink: the records of a batch, one Change per job."""

    def __init__(self) -> None:
        self.changes: dict[str, Change] = {}
        self.ended: list[str] = []  # jobs that reached a terminal state in this batch
        self.oldest: float | None = None  # the time of the batch's oldest event (its commit delay)

    def _seen(self, at: float) -> None:
        if self.oldest is None or at < self.oldest:
            self.oldest = at

    def _change(self, job_id: str) -> Change:
        change = self.changes.get(job_id)
        if change is None:
            change = self.changes[job_id] = Change(job_id)
        return change

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
    ) -> None:
        change = self._change(job_id)
        if submitted_at is not None and not redrive:  # a redriven job keeps its first submission time
            self._seen(submitted_at)
        if redrive:  # starts afresh: what came before it in this batch is replaced too
            key, fp, redrives = change.idem_key, change.fingerprint, change.redrives
            change = self.changes[job_id] = Change(job_id)
            change.idem_key, change.fingerprint, change.redrives = key, fp, redrives + 1
        change.namespace = namespace
        change.submitted_at = submitted_at
        change.resource_type = change.resource_type or resource_type
        change.operation = change.operation or operation.value
        change.resource_name = change.resource_name or resource_name
        change.tenant = change.tenant or tenant
        change.priority = priority if change.priority is None else change.priority
        change.not_before = change.not_before if not_before is None else not_before

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
    ) -> None:
        change = self._change(job_id)
        change.tenant = change.tenant or tenant
        self._seen(at)
        if change.terminal:  # the first terminal event of the batch won
            change.duplicates += status.terminal
            return
        change.attempts = max(change.attempts, attempt)
        change.worker_id = worker_id or change.worker_id
        if status is JobStatus.RUNNING and change.started_at is None:
            change.started_at = at
        if error is not None:
            change.error_code, change.error_message = error.code, error.message
        if status.terminal:
            change.status, change.terminal, change.finished_at = status.value, True, at
            change.started_at = change.started_at or at
            change.result = None if result is None else orjson.dumps(result).decode()
            self.ended.append(job_id)
        elif change.status == JobStatus.ACCEPTED.value:
            change.status = status.value

    def remember_key(self, key: str, job_id: str, fingerprint: str, at: float) -> None:
        change = self._change(job_id)
        change.idem_key, change.fingerprint = key, fingerprint

    def columns(self) -> list[list[Any]]:
        """The changes as one array per column: the arguments of UPSERT."""
        rows = [change.row() for change in self.changes.values()]
        return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in COLUMNS]
