"""The ARM JSON shapes the API answers with, built as plain dicts (cheap) from JobResult.

`schemas.py` holds the pydantic models these dicts follow; the schemathesis suite checks them.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.responses import Response

from controlplane_workers.models import JobResult, JobStatus, Operation

from .errors import JSON

_PERCENT = {JobStatus.ACCEPTED: 0.0, JobStatus.RUNNING: 50.0}

# The HTTP status of a failed operation's final answer, by the ARM error code the provider chose.
ERROR_STATUS = {
    "ResourceNotFound": 404,
    "NotFound": 404,
    "InvalidRequest": 400,
    "BadRequest": 400,
    "InvalidAction": 400,
    "InvalidParameter": 400,
    "Conflict": 409,
    "Forbidden": 403,
    "Canceled": 409,
    "UnknownProvider": 400,
    "Malformed": 400,
    "PoisonMessage": 400,
}


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1_000_000):06d}Z"


def dead_letter_view(info: dict[str, Any]) -> dict[str, Any]:
    """A dead letter (dlq.describe) in the API's camelCase; headers from other producers made safe."""
    attempts, at = info["attempts"], info["dead_lettered_at"]
    return {
        "id": None if info["job_id"] is None else str(info["job_id"]),
        "reason": str(info["reason"]),
        "detail": str(info["detail"]),
        "attempts": attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 1,
        "deadLetteredAt": iso(at) if isinstance(at, int | float) and not isinstance(at, bool) else None,
        "job": {
            "namespace": _text(info["provider_namespace"]),
            "type": _text(info["resource_type"]),
            "operation": _text(info["operation"]),
            "tenant": _text(info["tenant"]),
        },
    }


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=JSON)


def error_of(record: JobResult) -> dict[str, Any] | None:
    if record.error is None:
        if record.status is JobStatus.CANCELED:
            return {"code": "Canceled", "message": "the operation was canceled", "details": []}
        return None
    return {"code": record.error.code, "message": record.error.message, "details": []}


def _ended_error(record: JobResult) -> dict[str, Any] | None:
    return error_of(record) if record.status in (JobStatus.FAILED, JobStatus.CANCELED) else None


def operation_status(record: JobResult) -> dict[str, Any]:
    """The ARM operation status resource (GET /operations/{id})."""
    properties: dict[str, Any] = {
        "operation": record.operation.value if record.operation else None,
        "namespace": record.provider_namespace,
        "type": record.resource_type,
        "resourceName": record.resource_name,
        "attempts": record.attempts,
        "workerId": record.worker_id,
    }
    if record.not_before is not None:
        properties["notBefore"] = iso(record.not_before)
    if record.status is JobStatus.SUCCEEDED:
        properties["output"] = record.result
    return {
        "id": f"/operations/{record.job_id}",
        "name": record.job_id,
        "status": record.status.value,
        "startTime": iso(record.submitted_at),
        "endTime": iso(record.finished_at),
        "percentComplete": _PERCENT.get(record.status, 100.0),
        "properties": properties,
        "error": _ended_error(record),
    }


def job_view(record: JobResult) -> dict[str, Any]:
    """A job as /jobs shows it."""
    return {
        "id": record.job_id,
        "status": record.status.value,
        "namespace": record.provider_namespace,
        "type": record.resource_type,
        "operation": record.operation.value if record.operation else None,
        "resourceName": record.resource_name,
        "tenant": record.tenant,
        "priority": record.priority,
        "attempts": record.attempts,
        "workerId": record.worker_id,
        "submittedAt": iso(record.submitted_at),
        "startedAt": iso(record.started_at),
        "finishedAt": iso(record.finished_at),
        "notBefore": iso(record.not_before),
        "result": record.result if record.status is JobStatus.SUCCEEDED else None,
        "error": _ended_error(record),
    }


def list_items(result: Any) -> list[Any]:
    """A list job's result as the collection's items: a provider may return a list or `{"value": [...]}`."""
    if isinstance(result, dict) and "value" in result:
        result = result["value"]
    return result if isinstance(result, list) else ([] if result is None else [result])


def settled_resource(result: Any) -> Any:
    """A written resource as ARM shows it once its operation ended: `properties.provisioningState` is
    terminal (Succeeded) unless the provider said otherwise."""
    if isinstance(result, dict) and isinstance(result.get("properties"), dict):
        if "provisioningState" not in result["properties"]:
            return {**result, "properties": {**result["properties"], "provisioningState": "Succeeded"}}
    return result


def failure_response(record: JobResult) -> Response:
    error = error_of(record) or {"code": "OperationFailed", "message": "the operation failed", "details": []}
    return json_response({"error": error}, ERROR_STATUS.get(error["code"], 500))


def final_response(record: JobResult, operation: Operation | None) -> Response:
    """A finished operation answered like the synchronous call."""
    if record.status is not JobStatus.SUCCEEDED:
        return failure_response(record)
    if operation is Operation.DELETE:
        return Response(status_code=204)
    result = record.result
    if operation is Operation.LIST:
        result = {"value": list_items(result)}
    elif operation in (Operation.CREATE, Operation.UPDATE):
        result = settled_resource(result)
    if not isinstance(result, dict):
        result = {"value": result}
    return json_response(result, 200)
