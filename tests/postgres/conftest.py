"""The PostgreSQL operation store's tests: a private PostgreSQL per session, a database per test."""

from tests.support.postgres import pg_url, postgres  # noqa: F401  (fixtures)
