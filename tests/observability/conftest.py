"""The tracing tests need the `otel` extra; say so instead of failing on an ImportError. The e2e test's projector
needs a PostgreSQL database (tests/support/postgres.py)."""

from __future__ import annotations

import pytest

from tests.observability.spans import sdk
from tests.support.postgres import pg_url, postgres  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def _otel_installed(request: pytest.FixtureRequest) -> None:
    if request.module.__name__.rsplit(".", 1)[-1].startswith("test_tracing"):
        sdk()
