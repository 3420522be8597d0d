"""Keep passwords out of logs and errors."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL_WITH_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`amqp://user:secret@host/` -> `amqp://user:***@host/`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact_text(text: str) -> str:
    """Redact every URL password inside free text (exception messages, log lines)."""
    return _URL_WITH_PASSWORD.sub(r"\1:***@", text)
