"""The ARM RPC's common response headers, on every answer of the public app (errors included).

`x-ms-request-id` names this answer (a new GUID); the caller's `x-ms-client-request-id` and
`x-ms-correlation-request-id` come back unchanged (a missing correlation id is the request id), so
a call can be followed from the client through the API's logs and its trace span. A pure ASGI
middleware: it touches only the response start, not the body.
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane_workers import tracing

CLIENT_REQUEST_ID = b"x-ms-client-request-id"
CORRELATION_ID = b"x-ms-correlation-request-id"
REQUEST_ID = b"x-ms-request-id"
# Longer values are not echoed: ARM's ids are GUIDs, and an echo must not amplify what a caller sends.
MAX_ECHO = 256


@dataclass(frozen=True)
class RequestIds:
    request_id: str
    client_request_id: str | None
    correlation_id: str

    def log_fields(self) -> dict[str, str]:
        """For `extra=` of a log call: the JSON log lines carry them."""
        fields = {"request_id": self.request_id, "correlation_id": self.correlation_id}
        if self.client_request_id:
            fields["client_request_id"] = self.client_request_id
        return fields


current: ContextVar[RequestIds | None] = ContextVar("cpw_api_request_ids", default=None)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1") if 0 < len(value) <= MAX_ECHO else None
    return None


class ArmHeaders:
    """Adds the request id headers to every response; the ids are in `current` while the app answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        client = _header(scope, CLIENT_REQUEST_ID)
        ids = RequestIds(request_id, client, _header(scope, CORRELATION_ID) or request_id)
        extra = [(REQUEST_ID, request_id.encode()), (CORRELATION_ID, ids.correlation_id.encode("latin-1"))]
        if client is not None:
            extra.append((CLIENT_REQUEST_ID, client.encode("latin-1")))
        if tracing.enabled:  # the Azure SDK's attribute names, so traces of client and API line up
            attributes = {"az.service_request_id": request_id, "az.correlation_request_id": ids.correlation_id}
            if client is not None:
                attributes["az.client_request_id"] = client
            tracing.set_attributes(attributes)

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        token = current.set(ids)
        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            current.reset(token)
