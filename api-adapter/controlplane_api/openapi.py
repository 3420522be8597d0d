"""/openapi.json: OpenAPI 3.1, its schemas generated from the pydantic models in `schemas`.

The paths come from the route table (routes/): each route's operation id names its entry here, so a
route cannot be served undocumented (build_openapi raises KeyError) and a path is written once.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic.json_schema import models_json_schema

from controlplane_workers import __version__

from . import schemas
from .params import MAX_JSON_DEPTH
from .routes import ROUTES
from .settings import ApiSettings

REF = "#/components/schemas/{model}"
_INPUT = (schemas.ResourceBody, schemas.PatchBody, schemas.ActionBody, schemas.JobSubmission)
_OUTPUT = (
    schemas.ArmError,
    schemas.OperationStatusResource,
    schemas.AcceptedResource,
    schemas.AcceptedOperation,
    schemas.ResourcePage,
    schemas.JobView,
    schemas.JobPage,
    schemas.Stats,
    schemas.Fleet,
    schemas.DeadLetterPage,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref("ArmError")}}}
    if headers:
        out["headers"] = headers
    return out


def build_openapi(settings: ApiSettings) -> dict[str, Any]:
    _, top = models_json_schema(
        [(m, "validation") for m in _INPUT] + [(m, "serialization") for m in _OUTPUT], ref_template=REF
    )
    components = top["$defs"]

    retry_after = {"description": "Seconds to wait before polling or retrying.", "schema": {"type": "integer"}}
    location = {
        "description": "Poll this URL: 202 while running, then the operation's final answer.",
        "schema": {"type": "string"},
    }
    async_op = {
        "description": "The operation status resource (always 200 while it exists).",
        "schema": {"type": "string"},
    }
    poll_headers = {"Location": location, "Azure-AsyncOperation": async_op, "Retry-After": retry_after}

    segment = {"type": "string", "pattern": schemas.SEGMENT}
    api_version = {
        "name": "api-version",
        "in": "query",
        "required": True,
        "schema": {"type": "string", "pattern": schemas.API_VERSION},
        "description": "ARM API version, YYYY-MM-DD.",
    }
    wait = {
        "name": "wait",
        "in": "query",
        "required": False,
        "schema": {"type": "number", "minimum": 0, "maximum": settings.api_max_wait},
        "description": "Wait up to this many seconds and answer like the synchronous call if the job ends "
        "in time (also `Prefer: wait=N`).",
    }
    prefer = {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": r"^(respond-async|wait=[0-9]{1,2}|respond-async, ?wait=[0-9]{1,2})$"},
        "description": "RFC 7240: `wait=N` as ?wait=N; `respond-async` asks a GET for the 202 + Location form.",
    }
    priority_header = {
        "name": "x-ms-priority",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]$"},
        "description": "Job priority 0-9 (9 most urgent); default per operation: "
        "get 8, create and update 7, delete 6, list and action 5. Also ?priority=.",
    }
    priority_query = {
        "name": "priority",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0, "maximum": 9},
    }
    delay_header = {
        "name": "x-cpw-delay",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": r"^[0-9]{1,9}(\.[0-9]{1,6})?$"},
        "description": f"A delayed job: seconds before it may start, 0 to {settings.job_max_delay:g} "
        "(CPW_JOB_MAX_DELAY). Accepted at once; the job view's notBefore says when it starts. Also ?delay=.",
    }
    delay_query = {**delay_header, "name": "delay", "in": "query", "description": "As x-cpw-delay."}
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": schemas.IDEMPOTENCY_KEY},
        "description": f"The same key and request within {settings.api_idempotency_window:g} s answers "
        "the first success again (Idempotent-Replayed: true); another request: 422.",
    }
    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 200}}
    letter_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": schemas.JOB_ID}}
    operator_errors = {
        "404": _error(
            "No such dead letter (code DeadLetterNotFound); or the token is a tenant's, not an operator's: then"
            " the answer is that of a path that does not exist."
        ),
        "400": _error("A bad parameter (named in details)."),
        "503": _error(
            "The broker is unreachable, or another operator's request is walking the dead letters: nothing was done.",
            {"Retry-After": retry_after},
        ),
    }

    def path_params(*names: str) -> list[dict[str, Any]]:
        return [{"name": n, "in": "path", "required": True, "schema": segment} for n in names]

    common = {
        "401": _error("No or an unknown bearer token.", {"WWW-Authenticate": {"schema": {"type": "string"}}}),
        "500": _error("An internal error; no detail is given."),
        "503": _error(
            "The broker is unreachable or the index is rebuilding: nothing was done.", {"Retry-After": retry_after}
        ),
    }
    submit_errors = {
        "400": _error(
            f"Malformed JSON, a body nested deeper than {MAX_JSON_DEPTH} levels, an invalid field (named in"
            " details), or a bad parameter."
        ),
        "404": _error(
            "No such route, or (code SubscriptionNotFound) a subscription the caller's token does not hold: no job"
            " was made."
        ),
        "413": _error(f"The body is larger than {settings.api_max_body_bytes} bytes."),
        "422": _error("The Idempotency-Key was used with another request."),
        "429": _error(
            f"The tenant has too many jobs queued or running, or submits faster than {settings.api_tenant_rate:g} jobs"
            " a second (per API replica; Retry-After: whole seconds until it may submit again).",
            {"Retry-After": retry_after},
        ),
        **common,
    }
    lookup_errors = {"404": _error("Not found, or expired (code OperationExpired), or another tenant's."), **common}

    final = {
        "200": {
            "description": "The operation finished in time: the resource or the action's result.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "400": _error("The operation failed with a client error, or a bad parameter."),
        "403": _error("The operation failed: forbidden."),
        "404": _error("The operation failed: not found."),
        "409": _error("The operation was canceled or conflicted."),
    }
    accepted_op = {
        "description": "Accepted: the broker confirmed the job; poll Location.",
        "headers": poll_headers,
        "content": {"application/json": {"schema": _ref("AcceptedOperation")}},
    }
    submit_params = [api_version, wait, prefer, priority_header, priority_query, idempotency]
    write_params = [*submit_params, delay_header, delay_query]  # a read answers synchronously: never delayed
    timed_out = {
        "504": _error(
            f"GatewayTimeout: the job did not end within {settings.api_sync_timeout:g} s (or a longer ?wait=); it"
            " still runs. Retry after Retry-After.",
            {"Retry-After": retry_after},
        )
    }
    read_final = {k: v for k, v in final.items() if k != "200"}
    async_read = {**accepted_op, "description": "Only with `Prefer: respond-async`: poll Location."}
    page_params = [
        {
            "name": "$top",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
        },
        {
            "name": "$skiptoken",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "pattern": "^[0-9]{1,9}$"},
            "description": "From a nextLink.",
        },
    ]

    # Operation id -> its OpenAPI operation; the routes' path templates place them.
    operations: dict[str, Any] = {
        "Resources_CreateOrUpdate": {
            "summary": "create_or_update, offloaded",
            "parameters": write_params,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ResourceBody")}}},
            "responses": {
                "201": {
                    "description": "Accepted: provisioningState Accepted, the job id in jobId.",
                    "headers": poll_headers,
                    "content": {"application/json": {"schema": _ref("AcceptedResource")}},
                },
                **final,
                **submit_errors,
            },
        },
        "Resources_Get": {
            "summary": "get: an offloaded job, answered synchronously",
            "parameters": submit_params,
            "responses": {
                "200": {
                    "description": "The resource.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "202": async_read,
                **read_final,
                **submit_errors,
                **timed_out,
            },
        },
        "Resources_Update": {
            "summary": "update (PATCH, a JSON merge patch), offloaded",
            "parameters": write_params,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PatchBody")}}},
            "responses": {"202": accepted_op, **final, **submit_errors},
        },
        "Resources_Delete": {
            "summary": "delete, offloaded",
            "parameters": write_params,
            "responses": {"202": accepted_op, "204": {"description": "Deleted in time."}, **final, **submit_errors},
        },
        "Resources_Action": {
            "summary": "action, offloaded",
            "parameters": write_params,
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("ActionBody")}}},
            "responses": {"202": accepted_op, **final, **submit_errors},
        },
        "Resources_List": {
            "summary": "list: an offloaded job, answered synchronously, paged",
            "parameters": [*submit_params, *page_params],
            "responses": {
                "200": {"description": "A page.", "content": {"application/json": {"schema": _ref("ResourcePage")}}},
                "202": async_read,
                **read_final,
                **submit_errors,
                **timed_out,
            },
        },
        "Operations_Get": {
            "summary": "The operation status resource.",
            "parameters": [job_id],
            "responses": {
                "200": {
                    "description": "The operation; Retry-After while it runs.",
                    "headers": {"Retry-After": retry_after},
                    "content": {"application/json": {"schema": _ref("OperationStatusResource")}},
                },
                **lookup_errors,
            },
        },
        "Operations_Result": {
            "summary": "202 while running, then the final answer.",
            "parameters": [
                job_id,
                {**api_version, "required": False, "description": "Validated when given."},
                wait,
                prefer,
            ],
            "responses": {
                "202": accepted_op,
                "204": {"description": "A delete finished."},
                **final,
                "400": _error("A bad parameter, or the operation failed with a client error."),
                **lookup_errors,
            },
        },
        "Jobs_Submit": {
            "summary": "Submit a job for any provider.",
            "parameters": [wait, prefer, delay_header, delay_query, idempotency],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JobSubmission")}}},
            "responses": {
                "202": {
                    "description": "Accepted.",
                    "headers": poll_headers,
                    "content": {"application/json": {"schema": _ref("JobView")}},
                },
                "200": {
                    "description": "Finished within ?wait.",
                    "content": {"application/json": {"schema": _ref("JobView")}},
                },
                **submit_errors,
            },
        },
        "Jobs_List": {
            "summary": "This tenant's jobs, newest first, paged.",
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": [s.value for s in schemas.JobStatus]},
                },
                {
                    "name": "top",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
                {"name": "skipToken", "in": "query", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {"description": "A page.", "content": {"application/json": {"schema": _ref("JobPage")}}},
                "400": _error("A bad parameter."),
                **common,
            },
        },
        "Jobs_Get": {
            "parameters": [job_id],
            "responses": {
                "200": {"description": "The job.", "content": {"application/json": {"schema": _ref("JobView")}}},
                **lookup_errors,
            },
        },
        "Jobs_Cancel": {
            "summary": "Cancel (idempotent); 409 once the job has ended.",
            "parameters": [
                job_id,
                {**api_version, "required": False, "description": "Validated when given."},
                wait,
                prefer,
            ],
            "responses": {
                "202": {
                    "description": "Cancel requested.",
                    "headers": {"Retry-After": retry_after},
                    "content": {"application/json": {"schema": _ref("JobView")}},
                },
                "200": {
                    "description": "Canceled within ?wait.",
                    "content": {"application/json": {"schema": _ref("JobView")}},
                },
                "400": _error("A bad parameter."),
                "409": _error("The job has already ended."),
                **lookup_errors,
            },
        },
        "Fleet_Get": {
            "summary": "Workers heard through heartbeats.",
            "responses": {
                "200": {"description": "The fleet.", "content": {"application/json": {"schema": _ref("Fleet")}}},
                **common,
            },
        },
        "DeadLetters_List": {
            "summary": "Operators: dead-lettered jobs of every tenant, oldest first, paged.",
            "description": "A page is a position in the dead-letter queue: letters removed meanwhile shift later"
            " pages forward.",
            "parameters": [
                {
                    "name": "top",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
                {
                    "name": "skipToken",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]{1,9}$"},
                    "description": "From a nextLink.",
                },
            ],
            "responses": {
                "200": {
                    "description": "A page.",
                    "content": {"application/json": {"schema": _ref("DeadLetterPage")}},
                },
                **common,
                **operator_errors,
            },
        },
        "DeadLetters_Redrive": {
            "summary": "Operators: send a dead-lettered job round again, attempts reset; its operation is"
            " Accepted again.",
            "parameters": [letter_id],
            "responses": {
                "200": {
                    "description": "Published again (confirmed); the dead letter is gone.",
                    "content": {"application/json": {"schema": _ref("DeadLetter")}},
                },
                "409": _error("The broker routes this job to no queue; the dead letter was kept."),
                **common,
                **operator_errors,
            },
        },
        "DeadLetters_Discard": {
            "summary": "Operators: remove a dead letter for good; the job stays Failed.",
            "parameters": [letter_id],
            "responses": {"204": {"description": "Removed."}, **common, **operator_errors},
        },
        "Stats_Get": {
            "summary": "Queue depth, DLQ, consumers, jobs by state.",
            "responses": {
                "200": {"description": "Statistics.", "content": {"application/json": {"schema": _ref("Stats")}}},
                **common,
            },
        },
    }
    rpc_headers = {
        "x-ms-request-id": {"description": "This answer's id (a GUID).", "schema": {"type": "string"}},
        "x-ms-correlation-request-id": {
            "description": "The caller's, echoed; else the request id.",
            "schema": {"type": "string"},
        },
    }
    for operation in operations.values():  # the ARM RPC's common headers are on every answer
        for response in operation["responses"].values():
            response["headers"] = {**response.get("headers", {}), **rpc_headers}
    paths: dict[str, Any] = {}
    for route in ROUTES:
        entry = paths.setdefault(route.path, {})
        names = re.findall(r"{(\w+)}", route.path)
        if names and "id" not in names:  # ARM path segments, shared by every method of the path
            entry["parameters"] = path_params(*names)
        entry[route.method.lower()] = {"operationId": route.operation_id, **operations[route.operation_id]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "controlplane-workers API adapter",
            "version": __version__,
            "description": "ARM-style long-running operations answered by a worker fleet. See docs/api.md.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from CPW_API_TOKENS_FILE; it names the tenant.",
                }
            },
        },
    }
