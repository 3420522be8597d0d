"""The tracing tests need the `otel` extra; say so instead of failing on an ImportError."""

from __future__ import annotations

import pytest

from tests.observability.spans import sdk


@pytest.fixture(autouse=True)
def _otel_installed(request: pytest.FixtureRequest) -> None:
    if request.module.__name__.rsplit(".", 1)[-1].startswith("test_tracing"):
        sdk()
