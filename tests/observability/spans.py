"""An in-memory span exporter the tests can await: spans reach it as they end, in any thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest


def sdk() -> Any:
    """The OpenTelemetry SDK, or a failed test that says which extra to install."""
    try:
        from opentelemetry.sdk import trace as sdk_trace
    except ImportError:  # pragma: no cover - the otel extra is part of the test install
        pytest.fail("the OpenTelemetry SDK is not installed: pip install -e '.[test,otel]'")
    return sdk_trace


class SpanRecorder:
    """A TracerProvider whose ended spans are kept; `wait_for` awaits a condition over them."""

    def __init__(self) -> None:
        sdk_trace = sdk()
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        self.provider = sdk_trace.TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        recorder = self

        class Notify(sdk_trace.SpanProcessor):  # tells the recorder a span ended
            def on_end(self, span: Any) -> None:
                recorder._ended()

        self.provider.add_span_processor(Notify())
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def spans(self) -> Sequence[Any]:
        return self.exporter.get_finished_spans()

    def _ended(self) -> None:
        if self._loop is not None and self._changed is not None:
            self._loop.call_soon_threadsafe(self._changed.set)

    async def wait_for(self, condition: Callable[[Sequence[Any]], Any], timeout: float = 20.0) -> Any:
        """Return `condition(spans)` once it is truthy; every ended span wakes the check."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                result = condition(self.spans)
                if result:
                    return result
                await self._changed.wait()

    def shutdown(self) -> None:
        self.provider.shutdown()
