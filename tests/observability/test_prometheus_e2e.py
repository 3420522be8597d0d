"""End to end on a real Prometheus: the dashboards' queries and an alert, over what the services export.

Prometheus (Debian's package, loopback, 1 s scrape and rule evaluation) scrapes a real `cpw api`, two
real `cpw worker` processes (each its own ops port, labelled as two pods) and RabbitMQ's
`/metrics/detailed` endpoint as docs/metrics.md tells an operator to, with the project's rules file, and a
`cpw indexer` (the PostgreSQL store's projector, on a private PostgreSQL) following the same stream.
A workload with failing jobs runs through the API; then every dashboard query over the project's and
RabbitMQ's metrics must return data. Queries over kube-state-metrics and KEDA, which cannot run here,
are left out (tests/alerts/scaling.test.yaml feeds series shaped like theirs to promtool). Then the
workers stop while jobs keep arriving, and `CPWJobsWaitingWithoutConsumers` (its `for:` shortened in
the test's copy of the rules) goes from not firing to firing.
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.api.support import RG, A, V, start_api, start_worker, wait_ready
from tests.dashboards.dashboards import committed, queries
from tests.observability.prometheus import PrometheusServer, installed
from tests.postgres.test_projector import start_indexer

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "controlplane-workers.rules.yaml"
NAMESPACE = "cpw"  # the dashboards' $namespace as tests/dashboards substitutes it
ALERT = "CPWJobsWaitingWithoutConsumers"
ALERT_FOR = "3s"

# Metrics from exporters that cannot run here: covered by promtool unit tests instead.
ELSEWHERE = {
    "kube_horizontalpodautoscaler_": "kube-state-metrics (no cluster here): tests/alerts/scaling.test.yaml",
    "keda_": "the KEDA operator (no cluster here): tests/alerts/scaling.test.yaml",
}

# The workload: (script, how many, attempts each). fail:1 succeeds on its second attempt;
# poison is dead-lettered at once; sleep keeps jobs in flight across scrapes.
WORKLOAD = [("ok", 24, 1), ("sleep:1.5", 8, 1), ("fail:1", 8, 2), ("poison", 6, 1)]
WAVES = 6  # the jobs arrive in waves about a scrape apart, so every rate sees them change


def rules_with_short_for(directory: Path) -> Path:
    """The project's rules file, with the `for:` of the alert under test shortened (a copy)."""
    document = yaml.safe_load(RULES.read_text())
    found = 0
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == ALERT:
                rule["for"] = ALERT_FOR
                found += 1
    assert found == 1, f"{ALERT} not in {RULES}"
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def scrape_config(
    api_ops: str, workers: list[str], rabbitmq_prometheus: str, vhost: str, projector_ops: str
) -> dict[str, Any]:
    def target(url: str, **labels: str) -> dict[str, Any]:
        return {"targets": [url.removeprefix("http://")], "labels": {"namespace": NAMESPACE, **labels}}

    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "cpw-worker",
                "static_configs": [target(url, pod=f"cpw-worker-{i}") for i, url in enumerate(workers)],
            },
            {"job_name": "cpw-api", "static_configs": [target(api_ops, pod="cpw-api-0")]},
            {"job_name": "cpw-projector", "static_configs": [target(projector_ops, pod="cpw-projector-0")]},
            {  # docs/metrics.md: RabbitMQ's per-queue families; `vhost` keeps this release's queues only
                "job_name": "rabbitmq-queues",
                "metrics_path": "/metrics/detailed",
                "params": {"family": ["queue_coarse_metrics", "queue_consumer_count"], "vhost": [vhost]},
                "static_configs": [target(rabbitmq_prometheus)],
            },
        ],
    }


def elsewhere(expr: str) -> str | None:
    for prefix, reason in ELSEWHERE.items():
        if re.search(rf"\b{prefix}", expr):
            return reason
    return None


def finite(sample: dict[str, Any]) -> bool:
    return math.isfinite(float(sample["value"][1]))


async def wait_until(prometheus: PrometheusServer, http: httpx.AsyncClient, expr: str, check, timeout: float):  # noqa: ANN001
    """Poll an instant query until `check(result)` holds; Prometheus is polled, as a dashboard would."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await prometheus.query(http, expr)
                if check(last):
                    return last
                await asyncio.sleep(0.25)
    except TimeoutError:
        raise AssertionError(f"{expr}: last result {last}\n{prometheus.tail()}") from None


@pytest.fixture
async def platform(rabbitmq, vhost_url, tmp_path, pg_url):
    if rabbitmq.server is None:
        pytest.fail("the e2e test needs the test broker's prometheus port (unset CPW_TEST_RABBITMQ_URL)")
    if not installed():
        pytest.fail("prometheus is not installed: run `make test` (it installs the Debian package)")
    vhost = vhost_url.rsplit("/", 1)[1]
    workers = list(
        await asyncio.gather(
            start_worker(vhost_url, tmp_path, CPW_MAX_CONCURRENT_JOBS=8, CPW_WORKER_ID="cpw-worker-0"),
            start_worker(vhost_url, tmp_path, CPW_MAX_CONCURRENT_JOBS=8, CPW_WORKER_ID="cpw-worker-1"),
        )
    )
    api = await start_api(vhost_url, tmp_path)
    # the projector of the PostgreSQL store follows the same stream: the dashboard's projector row gets data
    projector = start_indexer(vhost_url, pg_url, tmp_path, "cpw-projector-0")
    await wait_ready(projector, f"{projector.ops_url}/health/ready")
    prometheus = PrometheusServer(
        scrape_config(
            api.ops_url, [w.ops_url for w in workers], rabbitmq.server.prometheus_url, vhost, projector.ops_url
        ),
        [rules_with_short_for(tmp_path)],
    )
    await asyncio.to_thread(prometheus.start)
    try:
        yield api, workers, prometheus, vhost
    finally:
        prometheus.cleanup()
        projector.stop()
        api.stop()
        for worker in workers:
            worker.stop()


async def test_dashboards_and_an_alert_on_a_real_prometheus(platform):
    api, workers, prometheus, vhost = platform
    async with httpx.AsyncClient(timeout=30.0) as http:
        # Every target is scraped before the workload starts, so the first jobs are seen change.
        await wait_until(
            prometheus, http, 'count(up{namespace="cpw"} == 1)', lambda r: r and int(float(r[0]["value"][1])) == 5, 30
        )

        # -- the workload: PUT (create) and POST /jobs (action) through the API, some failing
        jobs: list[str] = []
        scripts = [script for script, count, _ in WORKLOAD for _ in range(count)]
        for wave in range(WAVES):
            batch = scripts[wave::WAVES]
            answers = await asyncio.gather(
                *(
                    http.put(f"{api.url}{RG}/e2e-{wave}-{i}", params=V, headers=A, json={"script": script})
                    if i % 2 == 0
                    else http.post(
                        f"{api.url}/jobs",
                        headers=A,
                        json={
                            "namespace": "Test.Scripted",
                            "type": "things",
                            "operation": "action",
                            "request": {"resource_name": f"e2e-{wave}-{i}", "action": "go", "body": {"script": script}},
                        },
                    )
                    for i, script in enumerate(batch)
                )
            )
            # GET of a resource is a job too (operation "get", never failing here), asked in its asynchronous
            # form so the answer names the job; and reads of operations, for the read-latency panel.
            answers += await asyncio.gather(
                *(
                    http.get(f"{api.url}{RG}/e2e-{wave}-{i}", params=V, headers={**A, "Prefer": "respond-async"})
                    for i in range(2)
                )
            )
            for answer in answers:
                assert answer.status_code in (200, 201, 202), answer.text  # 200: POST /jobs saw it finish
                jobs.append(answer.json()["jobId"] if "jobId" in answer.json() else answer.json()["id"])
            await asyncio.gather(*(http.get(f"{api.url}/operations/{j}", params=V, headers=A) for j in jobs[-3:]))
            await asyncio.sleep(1.0)  # pacing the arrivals (about one scrape apart), not waiting for anything
        attempts = sum(count * each for _, count, each in WORKLOAD) + 2 * WAVES

        # Prometheus has every finished attempt and every submission once its last scrape saw them.
        await wait_until(
            prometheus,
            http,
            'sum(cpw_worker_jobs_total{namespace="cpw"})',
            lambda r: r and int(float(r[0]["value"][1])) == attempts,
            45,
        )
        await wait_until(
            prometheus,
            http,
            'sum(cpw_api_submissions_total{namespace="cpw"})',
            lambda r: r and int(float(r[0]["value"][1])) == len(jobs),
            15,
        )
        dlq = 'sum(rabbitmq_detailed_queue_messages{namespace="cpw", queue=~".*jobs\\\\.dlq"})'
        await wait_until(prometheus, http, dlq, lambda r: r and int(float(r[0]["value"][1])) == 6, 30)

        # -- every dashboard query returns data from the live services: a value for every series (NaN,
        # e.g. 0/0 or a quantile of nothing, is a gap in the panel)
        checked, skipped, empty = [], {}, []
        for name, dashboard in committed().items():
            for title, expr in queries(dashboard):
                reason = elsewhere(expr)
                if reason:
                    skipped[f"{name}: {title}: {expr}"] = reason
                    continue
                result = await prometheus.query(http, expr)
                checked.append(expr)
                if not result or not all(finite(s) for s in result):
                    empty.append(f"{name}: {title}: {expr} -> {result}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
        assert len(checked) > 50 and len(skipped) == 5, (len(checked), skipped)

        # Both worker pods are seen apart, as the worker-detail dashboard shows them.
        pods = await prometheus.query(http, 'sum by (pod) (cpw_worker_jobs_total{namespace="cpw"})')
        assert {s["metric"]["pod"] for s in pods} == {"cpw-worker-0", "cpw-worker-1"}
        dead = await prometheus.query(http, 'sum by (reason) (cpw_worker_dead_lettered_total{namespace="cpw"})')
        assert {s["metric"]["reason"]: float(s["value"][1]) for s in dead}["permanent-error"] == 6
        retries = await prometheus.query(http, 'sum(cpw_worker_retries_total{namespace="cpw"})')
        assert float(retries[0]["value"][1]) == 8

        # -- the alert: not firing while workers consume ...
        assert not [a for a in await prometheus.alerts(http) if a["labels"]["alertname"] == ALERT]

        # ... firing once the workers are gone and jobs wait.
        for worker in workers:
            worker.stop()
        for i in range(5):
            answer = await http.put(f"{api.url}{RG}/waiting-{i}", params=V, headers=A, json={"script": "ok"})
            assert answer.status_code == 201, answer.text

        # RabbitMQ refreshes a queue's counts every 5 s (collect_statistics_interval) and the `for:` is 3 s: a
        # refresh during the five PUTs makes the alert pending with fewer, and it fires before the next refresh
        # shows all five. Its value follows each evaluation, so wait for it firing with the five counted.
        async def firing() -> dict[str, Any]:
            while True:
                for alert in await prometheus.alerts(http):
                    if (
                        alert["labels"]["alertname"] == ALERT
                        and alert["state"] == "firing"
                        and float(alert["value"]) == 5
                    ):
                        return alert
                await asyncio.sleep(0.5)

        try:
            alert = await asyncio.wait_for(firing(), 45)
        except TimeoutError:
            raise AssertionError(f"{ALERT} did not fire: {await prometheus.alerts(http)}") from None
    assert (
        alert["labels"] | {"severity": "critical", "queue": "provider.jobs", "vhost": vhost, "namespace": NAMESPACE}
        == alert["labels"]
    )
    assert float(alert["value"]) == 5
    assert "5 jobs are ready on queue provider.jobs" in alert["annotations"]["description"]
    assert alert["annotations"]["runbook_url"].endswith("runbooks.md#cpwjobswaitingwithoutconsumers")
