"""Every metric the alerts, the dashboards and the promtool test series use is really exported.

Sources, each checked for real where it can run here:
- the worker: controlplane_workers.metrics, read from prometheus-client's registry (names by metric type:
  counters get `_total`, histograms `_bucket/_sum/_count`, info `_info`), and the process collector;
- the API adapter: controlplane_api.metrics, the same way; `cpw indexer`: controlplane_api.projector_metrics;
- RabbitMQ: a real node's prometheus plugin, scraped at the endpoint and families docs/metrics.md documents;
- kube-state-metrics and KEDA, which cannot run here: the explicit lists below, with their source.
Label matchers are checked too: a matcher on a label the metric does not carry selects nothing.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from tests.dashboards.dashboards import committed, queries

from .conftest import PROMTOOL_TESTS, load_rules

# Labels the scrape adds (ServiceMonitor / PodMonitor / static config) to every series.
SCRAPE_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}

# RabbitMQ's per-queue metrics, as docs/metrics.md says to scrape them.
RABBITMQ_DETAILED = "/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count"

# kube-state-metrics v2, docs/metrics/workload/horizontalpodautoscaler-metrics.md (labels: namespace,
# horizontalpodautoscaler; scraped with honorLabels so `namespace` is the HPA's).
KUBE_STATE_METRICS = {
    "kube_horizontalpodautoscaler_status_desired_replicas": {"namespace", "horizontalpodautoscaler"},
    "kube_horizontalpodautoscaler_status_current_replicas": {"namespace", "horizontalpodautoscaler"},
    "kube_horizontalpodautoscaler_spec_max_replicas": {"namespace", "horizontalpodautoscaler"},
    "kube_horizontalpodautoscaler_spec_min_replicas": {"namespace", "horizontalpodautoscaler"},
}
# KEDA operator >= 2.14, pkg/metricscollector/prommetrics.go (kedacore/keda): the object's namespace is in
# `namespace`, or in `exported_namespace` when the scrape does not honor the exporter's labels.
_KEDA_SCALER = {"namespace", "exported_namespace", "metric", "scaledObject", "scaler", "triggerIndex", "type"}
KEDA = {
    "keda_scaler_metrics_value": _KEDA_SCALER,
    "keda_scaler_active": _KEDA_SCALER,
    "keda_scaler_detail_errors_total": _KEDA_SCALER,
    "keda_scaled_object_errors_total": {"namespace", "exported_namespace", "scaledObject"},
}

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'")


@dataclass
class Selector:
    metric: str
    labels: set[str] = field(default_factory=set)


def selectors(expr: str) -> Iterator[Selector]:
    """The metric selectors of a PromQL expression: names not followed by `(`, with their matchers' labels."""
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'":
            match = _STRING.match(expr, i)
            assert match, f"unterminated string in {expr}"
            i = match.end()
        elif c == "[":
            i = expr.index("]", i) + 1
        elif c.isdigit() or (c == "." and i + 1 < len(expr) and expr[i + 1].isdigit()):
            match = re.compile(r"[0-9.eE+]+[a-zA-Z]*").match(expr, i)
            assert match
            i = match.end()
        elif _IDENT.match(expr, i):
            match = _IDENT.match(expr, i)
            assert match
            name, j = match.group(), match.end()
            while j < len(expr) and expr[j] == " ":
                j += 1
            following = expr[j] if j < len(expr) else ""
            if name in _KEYWORDS:
                if following == "(":  # by (...), on (...), group_left (...): label lists, not metrics
                    j = expr.index(")", j) + 1
                i = j
            elif following == "(" or re.match(r"(by|without)\s*\(", expr[j:]):  # a function or an aggregation
                i = j
            else:
                selector = Selector(name)
                if following == "{":
                    end = _matcher_end(expr, j)
                    selector.labels = _matcher_labels(expr[j + 1 : end])
                    j = end + 1
                yield selector
                i = j
        elif c == "{":  # a selector without a metric name
            end = _matcher_end(expr, i)
            raise AssertionError(f"selector without a metric name: {expr[i : end + 1]}")
        else:
            i += 1


def _matcher_end(expr: str, start: int) -> int:
    i = start + 1
    while expr[i] != "}":
        if expr[i] in "\"'":
            match = _STRING.match(expr, i)
            assert match
            i = match.end()
        else:
            i += 1
    return i


def _matcher_labels(body: str) -> set[str]:
    return set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", _STRING.sub('""', body)))


def test_the_selector_parser() -> None:
    found = list(
        selectors(
            'histogram_quantile(0.95, sum by (le, pod) (rate(a_bucket{x="1,}", y=~"b|c"}[5m]))) > 0.5 '
            'and on (namespace) (time() - b_seconds offset 5m > 60) or label_replace(c, "d", "$1", "e", "(.+)") '
            "unless count by (z) (cpw:rule:sum) * 1e3 + sum without (w) (d_total)"
        )
    )
    assert [(s.metric, s.labels) for s in found] == [
        ("a_bucket", {"x", "y"}),
        ("b_seconds", set()),
        ("c", set()),
        ("cpw:rule:sum", set()),
        ("d_total", set()),
    ]


# --- what the sources export -------------------------------------------------------------------------------


def _names_by_type(metric: MetricWrapperBase) -> dict[str, set[str]]:
    name, labels = metric._name, set(metric._labelnames)  # noqa: SLF001 - the registry's own description
    kind = metric._type  # noqa: SLF001
    if kind == "counter":
        return {f"{name}_total": labels, f"{name}_created": labels}
    if kind == "histogram":
        return {
            f"{name}_bucket": labels | {"le"},
            f"{name}_sum": labels,
            f"{name}_count": labels,
            f"{name}_created": labels,
        }
    if kind == "summary":
        return {name: labels | {"quantile"}, f"{name}_sum": labels, f"{name}_count": labels}
    if kind == "info":
        sample_labels = {key for family in metric.collect() for sample in family.samples for key in sample.labels}
        return {f"{name}_info": labels | sample_labels}
    return {name: labels}


def _module_metrics(module: object) -> dict[str, set[str]]:
    exported: dict[str, set[str]] = {}
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            exported.update(_names_by_type(value))
    assert exported, f"{module} defines no metrics"
    return exported


def worker_metrics() -> dict[str, set[str]]:
    import controlplane_workers.broker.recovery as recovery
    import controlplane_workers.looplag as looplag
    import controlplane_workers.metrics as metrics

    # every process's ops port serves the default registry: looplag's and the broker recovery's
    exported = _module_metrics(metrics) | _module_metrics(looplag) | _module_metrics(recovery)
    # the process and platform collectors of prometheus-client's default registry, which /metrics serves
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name.startswith(("process_", "python_")):
                exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


def api_metrics() -> dict[str, set[str]]:
    import controlplane_api.metrics as metrics
    import controlplane_workers.broker.recovery as recovery
    import controlplane_workers.looplag as looplag

    return _module_metrics(metrics) | _module_metrics(looplag) | _module_metrics(recovery)


def projector_metrics() -> dict[str, set[str]]:
    """`cpw indexer`: its own registry, plus the default one every ops port serves."""
    import controlplane_api.projector_metrics as metrics
    import controlplane_workers.broker.recovery as recovery
    import controlplane_workers.looplag as looplag

    return _module_metrics(metrics) | _module_metrics(looplag) | _module_metrics(recovery)


@pytest.fixture(scope="module")
def rabbitmq_metrics(rabbitmq) -> dict[str, set[str]]:  # noqa: ANN001 - the session fixture of tests/conftest.py
    """Scrape a real node's plugin after declaring the job queue and its DLQ (per-queue metrics need queues)."""
    prometheus_url = rabbitmq.server.prometheus_url if rabbitmq.server else None
    if prometheus_url is None:
        pytest.fail("this test scrapes the node it starts; unset CPW_TEST_RABBITMQ_URL to let it start one")
    vhost = rabbitmq.new_vhost()
    try:
        quoted = urllib.parse.quote(vhost, safe="")
        for queue in ("provider.jobs", "provider.jobs.dlq"):
            rabbitmq._request("PUT", f"/api/queues/{quoted}/{queue}", {"durable": True})  # noqa: SLF001
        body = ""
        for _ in range(100):  # the plugin lists a new queue once its stats are emitted
            with urllib.request.urlopen(prometheus_url + RABBITMQ_DETAILED, timeout=10) as response:
                body = response.read().decode()
            if 'queue="provider.jobs.dlq"' in body and f'vhost="{vhost}"' in body:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"RabbitMQ's plugin never listed the queues:\n{body[:2000]}")
    finally:
        rabbitmq.delete_vhost(vhost)
    exported: dict[str, set[str]] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?", line)
            assert match
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(3) or ""))
            exported.setdefault(match.group(1), set()).update(labels)
    return exported


# --- what the alerts, dashboards and promtool tests use ------------------------------------------------------


def used() -> Iterator[tuple[str, Selector]]:
    for rule in load_rules():
        where = f"rule {rule.get('alert') or rule.get('record')}"
        for selector in selectors(rule["expr"]):
            yield where, selector
    for name, dashboard in committed().items():
        for title, expr in queries(dashboard):
            for selector in selectors(expr):
                yield f"dashboard {name} / {title}", selector
        for variable in dashboard["templating"]["list"]:
            match = re.fullmatch(r"label_values\((.+), *([a-zA-Z_]+)\)", str(variable.get("query", "")))
            if variable["type"] == "query":
                assert match, f"{name}: variable {variable['name']} is not label_values(selector, label)"
                for selector in selectors(match.group(1)):
                    assert match.group(2) in SCRAPE_LABELS, variable["name"]
                    yield f"dashboard {name} / variable {variable['name']}", selector
    for path in PROMTOOL_TESTS:
        for test in yaml.safe_load(Path(path).read_text())["tests"]:
            for series in test.get("input_series", []):
                for selector in selectors(series["series"]):
                    yield f"promtool test {Path(path).name}", selector


def test_every_metric_used_is_exported(rabbitmq_metrics: dict[str, set[str]]) -> None:
    recorded = {rule["record"] for rule in load_rules() if "record" in rule}
    sources: dict[str, dict[str, set[str]]] = {
        "worker": worker_metrics(),
        "api": api_metrics(),
        "projector": projector_metrics(),
        "rabbitmq": rabbitmq_metrics,
        "kube-state-metrics": KUBE_STATE_METRICS,
        "keda": KEDA,
    }
    problems = []
    seen_sources: set[str] = set()
    for where, selector in used():
        if selector.metric in recorded:
            continue
        owners = [name for name, exported in sources.items() if selector.metric in exported]
        if not owners:
            problems.append(f"{where}: {selector.metric} is exported by nobody")
            continue
        seen_sources.update(owners)
        labels = set().union(*(sources[name][selector.metric] for name in owners)) | SCRAPE_LABELS
        unknown = selector.labels - labels
        if unknown:
            problems.append(f"{where}: {selector.metric} has no label(s) {sorted(unknown)}")
    assert not problems, "\n".join(problems)
    assert seen_sources == set(sources), f"a source is never used: {set(sources) - seen_sources}"


def test_the_api_process_does_not_export_worker_metrics() -> None:
    """API pods must not export cpw_worker_* series: a `cpw_worker_ready 0` from an API pod would page
    CPWNoReadyWorkers when KEDA scales the workers to zero, and count API pods as workers on the dashboards."""
    code = (
        "import importlib, pkgutil, controlplane_api\n"
        "for m in pkgutil.walk_packages(controlplane_api.__path__, 'controlplane_api.'):\n"
        "    importlib.import_module(m.name)\n"
        "from prometheus_client import REGISTRY\n"
        "print(sorted({s.name for f in REGISTRY.collect() for s in f.samples if s.name.startswith(('cpw_worker_', 'worker_'))}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() != "[]":
        pytest.xfail(
            "known bug (reported to the worker core): `import controlplane_workers` imports .worker and so registers "
            f"the worker's metrics in every process, the API's included: {result.stdout.strip()[:200]}"
        )


def test_the_stuck_threads_gauge_is_exported_and_documented() -> None:
    """Operators learn from cpw_worker_stuck_threads why a worker is not ready (hung sync provider calls, issue 17)."""
    assert worker_metrics()["cpw_worker_stuck_threads"] == set()
    assert "`cpw_worker_stuck_threads` | gauge" in (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
