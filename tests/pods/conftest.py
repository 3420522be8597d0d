"""The `pods:` summary line, printed whatever pytest captured (make pods shows it)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.chartlib import render_set
from tests.conftest import BrokerEndpoint
from tests.pods.broker import BrokerSide
from tests.pods.cluster import POSTGRES_HOST, Cluster
from tests.pods.secrets import POSTGRES_SECRETS, prerequisites
from tests.support.postgres import PostgresServer, postgres  # noqa: F401  (the session's PostgreSQL fixture)

STATS: Counter[str] = Counter()
HELM_TEST: list[bool] = []


@pytest.fixture
def pod_stats() -> Counter[str]:
    return STATS


def new_database(server: PostgresServer) -> str:
    """A fresh database on the session's PostgreSQL, as a pod would dial it (POSTGRES_HOST, via the relay)."""
    import asyncpg

    name = f"pods_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        admin = await asyncpg.connect(server.url())
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()

    asyncio.run(create())
    return f"postgresql://postgres@{POSTGRES_HOST}:5432/{name}"


@pytest.fixture
def make_cluster(
    image_venv: Path, rabbitmq: BrokerEndpoint, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator:
    clusters: list[Cluster] = []
    side = BrokerSide(rabbitmq)

    def make(value_set: str, docs: list[dict] | None = None) -> tuple[Cluster, str]:
        docs = render_set(value_set) if docs is None else docs
        database: PostgresServer | None = None
        dsn = None
        if value_set in POSTGRES_SECRETS:  # started only for the value sets that keep operations in PostgreSQL
            database = request.getfixturevalue("postgres")
            dsn = new_database(database)
        objects, token = prerequisites(value_set, rabbitmq, side.vhost_for(value_set, docs), dsn)
        objects.update(side.operator(docs))
        assert rabbitmq.server is not None, "tests/pods needs the session's own broker (ports it can relay)"
        ports = {5672: rabbitmq.server.amqp_port, 15672: rabbitmq.server.management_port}
        cluster = Cluster(
            docs, objects, image_venv, tmp_path / f"c{len(clusters)}", ports, database.port if database else None
        )
        clusters.append(cluster)
        side.accounts(cluster.objects)
        assert not cluster.problems(), f"fields the pod runner does not model: {cluster.problems()}"
        return cluster.build(), token

    yield make
    for cluster in clusters:
        cluster.close()
    side.close()


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if not STATS:
        return
    helm_test = "ok" if HELM_TEST and all(HELM_TEST) else "failed"
    terminalreporter.write_line(
        f"pods: value_sets={STATS['value_sets']} workloads={STATS['workloads']} started={STATS['started']} "
        f"probes_passed={STATS['probes_passed']} jobs_ok={STATS['jobs_ok']} helm_test={helm_test}"
    )
