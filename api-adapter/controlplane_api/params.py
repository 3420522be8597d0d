"""Reading a request: path segments, query parameters, headers and the JSON body, each validated.

Every bad input becomes a 4xx ApiError naming the offending field; nothing here raises anything else.
"""

from __future__ import annotations

import re

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from controlplane_workers.models import JobStatus, Operation
from controlplane_workers.offloading import DEFAULT_PRIORITY
from controlplane_workers.status import MAX_PAGE

from .errors import ApiError, invalid
from .schemas import API_VERSION, IDEMPOTENCY_KEY, JOB_ID, SEGMENT

_SEGMENT = re.compile(SEGMENT.strip("^$"))
_API_VERSION = re.compile(API_VERSION.strip("^$"))
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY.strip("^$"))
_JOB_ID = re.compile(JOB_ID.strip("^$"))
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*([^,;\s]+)", re.IGNORECASE)
_PREFER_ASYNC = re.compile(r"(?:^|[,;\s])respond-async(?:$|[,;\s])", re.IGNORECASE)
_SKIP_TOKEN = re.compile(r"[0-9]{1,9}")
# ASCII digits only, at most 4: str.isdigit() accepts "²" and "٣", and int() of 5,000 digits raises.
_SMALL_INT = re.compile(r"[0-9]{1,4}")
PAGE_MAX = MAX_PAGE  # the SDK's JobQueue.list_jobs has the same bound
# The deepest JSON body accepted: orjson decodes 1,024 levels but encodes only 255, and the job wraps the
# body in a few levels of its own, so a deeper body could be accepted and never delivered.
MAX_JSON_DEPTH = 64


def segment(request: Request, name: str) -> str:
    value = request.path_params[name]
    if not _SEGMENT.fullmatch(value):
        raise invalid(f"'{name}' must be 1 to 90 letters, digits or ._()- starting with a letter or digit.", name)
    return value


def api_version(request: Request) -> str:
    value = optional_api_version(request)
    if value is None:
        raise invalid(
            "The 'api-version' query parameter is required (YYYY-MM-DD).", "api-version", "MissingApiVersionParameter"
        )
    return value


def optional_api_version(request: Request) -> str | None:
    """?api-version when given, validated: the polling routes copy it into Location."""
    value = request.query_params.get("api-version")
    if value is not None and not _API_VERSION.fullmatch(value):
        raise invalid(
            f"'api-version' must be YYYY-MM-DD, not {value[:40]!r}.", "api-version", "InvalidApiVersionParameter"
        )
    return value


def priority(request: Request, operation: Operation) -> int:
    """x-ms-priority or ?priority=, 0-9; the operation's default when neither is given."""
    value = request.headers.get("x-ms-priority")
    target = "x-ms-priority"
    if value is None:
        value, target = request.query_params.get("priority"), "priority"
    if value is None:
        return DEFAULT_PRIORITY[operation]
    number = small_int(value)
    if number is None or not 0 <= number <= 9:
        raise invalid(f"'{target}' must be an integer from 0 to 9.", target)
    return number


_DELAY = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,6})?")
DELAY_HEADER, MAX = "x-cpw-delay", "CPW_JOB_MAX_DELAY"


def delay(request: Request, limit: float, body_value: object = None) -> float | None:
    """Seconds a delayed job waits: the body's `delay` (POST /jobs), else x-cpw-delay or ?delay=;
    None when none is given. ASCII decimals only, 0 to `limit` (CPW_JOB_MAX_DELAY), else 400."""
    target, value = "delay", body_value
    if value is None:
        value, target = request.headers.get(DELAY_HEADER), DELAY_HEADER
        if value is None:
            value, target = request.query_params.get("delay"), "delay"
        if value is None:
            return None
        value = float(value) if _DELAY.fullmatch(value) else None
    # the body's JSON number: orjson has no NaN or Infinity, and a bool is no number of seconds
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= limit
    if not ok:
        raise invalid(f"'{target}' must be a number of seconds from 0 to {limit:g} (the maximum delay, {MAX}).", target)
    return float(value)  # type: ignore[arg-type]


def small_int(value: str) -> int | None:
    """`value` as an int if it is 1 to 4 ASCII digits, else None (never an exception)."""
    return int(value) if _SMALL_INT.fullmatch(value) else None


def wait_for(request: Request, max_wait: float) -> float:
    """?wait=N or `Prefer: wait=N` (RFC 7240): seconds to wait for the outcome, capped at `max_wait`."""
    value = request.query_params.get("wait")
    target = "wait"
    if value is None:
        prefer = request.headers.get("prefer")
        if not prefer:
            return 0.0
        match = _PREFER_WAIT.search(prefer)
        if match is None:
            return 0.0
        value, target = match.group(1), "Prefer"
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600 or seconds != seconds:
        raise invalid(f"'{target}' must be a number of seconds from 0 to {max_wait:g}.", target)
    return min(seconds, max_wait)


def respond_async(request: Request) -> bool:
    """`Prefer: respond-async` (RFC 7240): the caller asks for the 202 + Location form of a GET."""
    prefer = request.headers.get("prefer")
    return prefer is not None and _PREFER_ASYNC.search(prefer) is not None


def collection_page(request: Request) -> tuple[int, int]:
    """(offset, size) of a collection GET's page from `$skiptoken` and `$top` (1-1000, default 1000)."""
    token = request.query_params.get("$skiptoken", "0")
    if not _SKIP_TOKEN.fullmatch(token):
        raise invalid("'$skiptoken' must be a skip token from a nextLink.", "$skiptoken")
    top = small_int(request.query_params.get("$top", str(PAGE_MAX)))
    if top is None or not 1 <= top <= PAGE_MAX:
        raise invalid(f"'$top' must be an integer from 1 to {PAGE_MAX}.", "$top")
    return int(token), top


def skip_offset(request: Request) -> int:
    """`skipToken`: a position from a nextLink (digits)."""
    token = request.query_params.get("skipToken", "0")
    if not _SKIP_TOKEN.fullmatch(token):
        raise invalid("'skipToken' must be a skip token from a nextLink.", "skipToken")
    return int(token)


def job_id(request: Request) -> str:
    value = request.path_params["id"]
    if not _JOB_ID.fullmatch(value):
        raise invalid("'id' must be a job id: 1 to 200 letters, digits or ._:- starting with a letter or digit.", "id")
    return value


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise invalid("'Idempotency-Key' must be 1 to 255 printable ASCII characters.", "Idempotency-Key")
    return key


def status_filter(request: Request) -> JobStatus | None:
    value = request.query_params.get("status")
    if value is None:
        return None
    try:
        return JobStatus(value)
    except ValueError:
        raise invalid("'status' must be one of Accepted, Running, Succeeded, Failed, Canceled.", "status") from None


def page_size(request: Request) -> int:
    number = small_int(request.query_params.get("top", "100"))
    if number is None or not 1 <= number <= PAGE_MAX:
        raise invalid(f"'top' must be an integer from 1 to {PAGE_MAX}.", "top")
    return number


def too_large(limit: int) -> ApiError:
    return ApiError(413, "RequestEntityTooLarge", f"The request body is larger than {limit} bytes.", reason="too_large")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            over = int(length) > limit
        except ValueError:
            raise invalid("Content-Length is not a number.", "Content-Length") from None
        if over:
            raise too_large(limit)
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, model: type[BaseModel], required: bool, limit: int) -> tuple[dict, bytes]:
    """(the JSON object, its raw bytes), validated against `model`; ({}, b"") for an optional empty body."""
    raw = await read_body(request, limit)
    if not raw.strip():
        if required:
            raise invalid("The request body is required: a JSON object.", "body", "InvalidRequestContent")
        return {}, raw
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"The request body is not valid JSON: {exc.msg}.", "body", "InvalidRequestContent") from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.", "body", "InvalidRequestContent")
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and too_deep(data, MAX_JSON_DEPTH):
        raise invalid(
            f"The request body is nested deeper than {MAX_JSON_DEPTH} levels.", "body", "InvalidRequestContent"
        )
    try:
        model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    return data, raw


def too_deep(data: object, limit: int) -> bool:
    """Whether `data` nests more than `limit` objects/arrays; iterative, so no recursion limit applies."""
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def validation_error(exc: ValidationError) -> ApiError:
    """400 InvalidRequestContent with one detail per invalid field (at most 20)."""
    details = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False)[:20]:
        target = ".".join(str(part) for part in err["loc"]) or "body"
        details.append({"code": "InvalidField", "target": target, "message": f"'{target}': {err['msg']}"})
    first = details[0]
    return ApiError(400, "InvalidRequestContent", f"The field {first['message']}", details=details, reason="invalid")
