"""JSON logs that carry the job and the worker, with passwords redacted."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Callable

import orjson

from . import tracing
from .redact import redact_text


class Bursts:
    """One warning per burst of the same message: the first, then at most one every `every` seconds, which
    says how many were held back. A broker outage hands back every job in flight at once, and a line per
    job (64 in a cluster drill's node kill) buried the one line that mattered."""

    def __init__(self, log: logging.Logger, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.every, self.clock = log, every, clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, message: str) -> None:
        now = self.clock()
        if now - self._last.get(message, float("-inf")) < self.every:
            self._held[message] = self._held.get(message, 0) + 1
            return
        self._last[message] = now
        held = self._held.pop(message, 0)
        self.log.warning(message + (f" ({held} more since the last such line)" if held else ""))


job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
_worker_id: str | None = None

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        if _worker_id:
            entry["worker_id"] = _worker_id
        job_id = job_id_var.get()
        if job_id:
            entry["job_id"] = job_id
        if tracing.enabled:
            ids = tracing.current_ids()
            if ids is not None:
                entry["trace_id"], entry["span_id"] = ids
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = redact_text(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def setup_logging(level: str = "INFO", fmt: str = "json", worker_id: str | None = None) -> None:
    global _worker_id
    _worker_id = worker_id
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiormq", "aio_pika", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
