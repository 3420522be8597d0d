"""Errors answered in the ARM error shape: `{"error": {"code", "message", "details": [...]}}`.

Only these reach a client; any other exception becomes a 500 `InternalServerError` with no detail.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

JSON = "application/json"


def arm_error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


class ApiError(Exception):
    """An answer other than success. `reason` labels cpw_api_rejections_total when the request was refused."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.reason = reason
        self.headers = headers or {}

    def response(self) -> Response:
        return Response(
            orjson.dumps(arm_error_body(self.code, self.message, self.details)),
            status_code=self.status,
            headers=self.headers,
            media_type=JSON,
        )


def invalid(message: str, target: str, code: str = "InvalidParameter") -> ApiError:
    """400 naming the offending field."""
    return ApiError(
        400, code, message, details=[{"code": code, "target": target, "message": message}], reason="invalid"
    )


def not_found(message: str, code: str = "NotFound") -> ApiError:
    return ApiError(404, code, message, reason="not_found")


NO_ROUTE = "No route matches this path."


def no_route() -> ApiError:
    """The answer to a path that does not exist; also what a tenant gets on an operator's route."""
    return not_found(NO_ROUTE)


def internal_error() -> Response:
    return Response(
        orjson.dumps(arm_error_body("InternalServerError", "The server failed to answer the request.")),
        status_code=500,
        media_type=JSON,
    )


def unavailable(message: str, retry_after: str) -> ApiError:
    """503 + Retry-After: the broker (or the status index) cannot serve this now; nothing was done."""
    return ApiError(
        503, "ServiceUnavailable", message, reason="broker_unavailable", headers={"Retry-After": retry_after}
    )


def gateway_timeout(message: str, retry_after: str) -> ApiError:
    """504 GatewayTimeout + Retry-After: a synchronous GET's job did not end within its budget. Not a
    202: an ARM client would take any success body of a GET for the resource."""
    return ApiError(504, "GatewayTimeout", message, reason="sync_timeout", headers={"Retry-After": retry_after})
