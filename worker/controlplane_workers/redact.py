"""Keep secrets out of logs, errors and dead-letter headers.

Exception messages of HTTP and cloud SDKs quote what they sent: URLs with passwords, SAS query strings
(`sig=`), `Authorization: Bearer ...` headers, connection strings (`AccountKey=`, `SharedAccessKey=`,
`password=`). Redaction errs towards masking: an ordinary word after `token:` is masked too.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

_URL_WITH_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)
# `Bearer <token>`, `SharedAccessSignature sr=...&sig=...`, `Authorization: Basic <base64>`.
_SCHEME_CREDENTIALS = re.compile(
    r"\b(Bearer|SharedAccessSignature|(?<=Authorization: )Basic)\s+(?!\*\*\*)[^\s,;'\"]+", re.IGNORECASE
)
# Names whose value is a secret, alone or with a prefix (`client_secret`, `x-api-key`, `db_password`).
_SECRET_NAME = (
    r"(?<![A-Za-z0-9])(?:[A-Za-z0-9]+[_-])*"
    r"(?:password|passwd|pwd|secret|token|sig|signature|api[_-]?key|account[_-]?key|shared[_-]?access[_-]?key"
    r"|shared[_-]?access[_-]?signature|private[_-]?key|credentials?)"
)
# `"name": "value"` and `'name': 'value'` (JSON, Python reprs).
_QUOTED_SECRET = re.compile(rf"([\"']?{_SECRET_NAME}[\"']?\s*[:=]\s*)([\"'])[^\"']*\2", re.IGNORECASE)
# `name=value` up to the next separator of query strings, connection strings and prose.
_BARE_SECRET = re.compile(rf"({_SECRET_NAME}\s*[:=]\s*)(?!\*\*\*)[^\s&;,'\"]+", re.IGNORECASE)


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
    """Mask every secret this module knows inside free text (exception messages, log lines)."""
    text = _URL_WITH_PASSWORD.sub(rf"\1:{MASK}@", text)
    text = _SCHEME_CREDENTIALS.sub(rf"\1 {MASK}", text)
    text = _QUOTED_SECRET.sub(rf"\1\2{MASK}\2", text)
    return _BARE_SECRET.sub(rf"\1{MASK}", text)
