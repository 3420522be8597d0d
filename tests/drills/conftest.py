"""Drill fixtures: each drill module gets its own broker node (drills stop and restart it), and the
run ends with one line per drill and the summary line `make drill` promises."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.drills.harness import RESULTS, Cluster
from tests.support.rabbitmq import RabbitMQServer, own_node


@pytest.fixture(scope="module")
def drill_node() -> Iterator[RabbitMQServer]:
    yield from own_node()


@pytest.fixture
async def cluster(drill_node, tmp_path):
    made: list[Cluster] = []

    async def start(apis: int = 2, workers: int = 3, api_settings: dict | None = None, **worker_settings) -> Cluster:  # noqa: ANN003
        if drill_node.process is None:  # a failed drill may have left the node stopped
            drill_node.start()
        c = Cluster(drill_node, tmp_path, api_settings=api_settings or {})
        c = await c.start(apis, workers, **worker_settings)
        made.append(c)
        return c

    yield start
    for c in made:
        c.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    from tests.drills.test_cluster import CLUSTER_RESULTS, summary
    from tests.drills.test_fairness import RESULTS as FAIRNESS

    if FAIRNESS:
        terminalreporter.section("fairness drill")
        for line in FAIRNESS:
            terminalreporter.write_line(line)

    if CLUSTER_RESULTS:
        terminalreporter.section("cluster drill account")
        for account in CLUSTER_RESULTS:
            terminalreporter.write_line(account.line())
        terminalreporter.write_line(summary(CLUSTER_RESULTS))
    _pg_summary(terminalreporter)
    if not RESULTS:
        return
    terminalreporter.section("drill account")
    for account in RESULTS:
        terminalreporter.write_line(account.line())
    total = lambda attr: sum(getattr(a, attr) for a in RESULTS)  # noqa: E731
    worst = max(a.max_recovery_s for a in RESULTS)
    terminalreporter.write_line(
        f"drill: accepted={total('accepted')} terminal={total('terminal')} lost={total('lost')} "
        f"duplicates={total('duplicates')} redelivered={total('redelivered')} max_recovery_s={worst:.1f}"
    )


def _pg_summary(terminalreporter) -> None:  # noqa: ANN001
    from tests.drills.test_postgres import PG_RESULTS, pg_summary

    if PG_RESULTS:
        terminalreporter.section("PostgreSQL store drill account")
        for account in PG_RESULTS:
            terminalreporter.write_line(account.line())
        terminalreporter.write_line(pg_summary(PG_RESULTS))
