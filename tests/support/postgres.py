"""A private PostgreSQL for tests: Debian's postgresql (15) on loopback, on a free port, in a temp dir.

initdb + pg_ctl as the `postgres` user (PostgreSQL refuses to run as root), trust auth on loopback
only, so a test run never touches a system cluster and two runs never share state.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.rabbitmq import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


def installed() -> bool:
    return (BIN / "initdb").exists() and (BIN / "pg_ctl").exists()


@dataclass
class PostgresServer:
    """One cluster; `start()` returns once it accepts connections (pg_ctl -w)."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cpw-postgres-")))
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.base / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float = 60.0) -> str:
        command = [str(BIN / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]}: {result.stdout}{result.stderr}")
        return result.stdout

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def session_server() -> Iterator[PostgresServer]:
    """For a session fixture to `yield from`: skipped, with the reason, when PostgreSQL is not installed."""
    if not installed():
        pytest.skip(f"PostgreSQL 15 is not installed ({BIN}): run `make system-deps`")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's private PostgreSQL (import this fixture into a conftest.py to use it)."""
    yield from session_server()


@pytest.fixture
async def pg_url(postgres: PostgresServer) -> AsyncIterator[str]:
    """A fresh database per test: nothing left over from another test's projector or API."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres.url())
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield postgres.url(name)
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


def main(argv: list[str]) -> int:
    """`python -m tests.support.postgres -- COMMAND ...` (`make run-postgres`): COMMAND with CPW_API_STORE=postgresql
    and CPW_POSTGRES_URL set to a private PostgreSQL in a temp dir, removed once COMMAND exits."""
    import signal
    import sys

    command = argv[1:] if argv[:1] == ["--"] else argv
    if not command:
        print("usage: python -m tests.support.postgres -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    if not installed():
        print(f"PostgreSQL 15 is not installed ({BIN}): run `make system-deps`", file=sys.stderr)
        return 2
    server = PostgresServer().start()
    try:
        print(f"PostgreSQL on 127.0.0.1:{server.port} (data in {server.data}, removed on exit)", file=sys.stderr)
        env = {**os.environ, "CPW_API_STORE": "postgresql", "CPW_POSTGRES_URL": server.url()}
        child = subprocess.Popen(command, env=env)
        signal.signal(signal.SIGTERM, lambda *_: child.terminate())
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # Ctrl-C reached COMMAND too; wait for it to stop
                continue
    finally:
        server.cleanup()


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
