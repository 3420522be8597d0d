"""Grafana dashboards for controlplane-workers, as code (grafana-foundation-sdk).

    python dashboards/generate.py           # (re)write dashboards/*.json
    python dashboards/generate.py --check   # exit 1 if a committed JSON differs from the code

The JSON files are committed (the chart ships them as ConfigMaps for Grafana's sidecar); a test proves that
they are what this code generates. Every query uses the variables `$datasource`, `$namespace` and `$job`
(the scrape job(s) of the API and worker pods), so one Grafana serves several installs. Panels read the raw
metrics, not the recording rules of alerts/, so the dashboards work without the PrometheusRule.

Metric sources (docs/metrics.md): the workers' and the API's /metrics, RabbitMQ's prometheus plugin
(`/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count`), kube-state-metrics (the
KEDA-made HPA) and the KEDA operator.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

HERE = Path(__file__).resolve().parent
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label filters every query carries.
SCOPE = 'namespace="$namespace", job=~"$job"'
WORKER_POD = 'namespace="$namespace", job=~"$job", pod=~"$pod"'
RABBIT = 'namespace="$namespace"'
# The job queue is "<anything>jobs" (default provider.jobs), its dead-letter queue "<job queue>.dlq".
JOBS_QUEUE = 'queue=~".*jobs"'
DLQ = 'queue=~".*jobs\\\\.dlq"'
# The worker HPA: the chart names it <release>-worker; KEDA's default is keda-hpa-<scaledobject>.
HPA = 'namespace="$namespace", horizontalpodautoscaler=~".*worker.*"'
FINISHED = 'outcome=~"succeeded|failed|error|timeout"'
FAILED = 'outcome=~"failed|error|timeout"'
WRITES = 'method=~"PUT|POST|PATCH|DELETE"'


def keda(template: str) -> str:
    """A query over the KEDA operator's series of the workers' ScaledObject in $namespace, whether Prometheus
    kept KEDA's `namespace` label (honorLabels) or moved it to `exported_namespace`. `{sel}` in the template
    stands for the label matchers."""
    return " or ".join(
        template.replace("{sel}", selector)
        for selector in (
            '{exported_namespace="$namespace", scaledObject=~".*worker.*"}',
            '{namespace="$namespace", exported_namespace="", scaledObject=~".*worker.*"}',
        )
    )


Query = tuple[str, str]  # (PromQL expression, legend format)


def aggregate(op: str, inner: str, by: str = "") -> str:
    """`op by (by) (inner)`, or `op(inner)` with no grouping: one spelling for every query of the dashboards."""
    return f"{op} by ({by}) ({inner})" if by else f"{op}({inner})"


def gauge(metric: str, selector: str, by: str = "", op: str = "sum") -> str:
    """A gauge summed (or counted, maxed) over the pods, so a panel only names the metric and the grouping."""
    return aggregate(op, f"{metric}{{{selector}}}", by)


def per_second(metric: str, selector: str, by: str = "") -> str:
    """A counter's rate summed over the pods: the shape of every "per second" line."""
    return aggregate("sum", f"rate({metric}{{{selector}}}[$__rate_interval])", by)


def quantile(q: float, metric: str, selector: str, by: str = "") -> str:
    """One quantile of a histogram, optionally per label (`by`), over all pods' buckets."""
    by_clause = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, {per_second(f'{metric}_bucket', selector, by_clause)})"


def quantiles(metric: str, selector: str, by: str = "") -> list[Query]:
    """p50 / p95 / p99 of a histogram: the three lines every latency panel shows."""
    prefix = "{{" + by + "}} " if by else ""
    return [(quantile(q, metric, selector, by), f"{prefix}p{int(q * 100)}") for q in (0.5, 0.95, 0.99)]


def steps(*pairs: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in pairs])
    )


# Thresholds shared by several panels, named by what they judge.
NEUTRAL = steps((None, "green"))
AT_LEAST_ONE = steps((None, "red"), (1, "green"))  # ready pods, consumers: none is an outage
NONE_WANTED = steps((None, "green"), (1, "red"))  # dead letters, slow requests: any is a problem
JOB_DURATION = steps((None, "green"), (900, "red"))  # CPWJobDurationHigh: p95 above 15 minutes
QUEUE_WAIT = steps((None, "green"), (120, "red"))  # CPWQueueWaitHigh: p95 above 2 minutes
HEARTBEAT_AGE = steps((None, "green"), (15, "orange"), (60, "red"))  # CPWWorkerHeartbeatMissing at 60s
LOOP_LAG = steps((None, "green"), (0.025, "orange"), (0.1, "red"))  # CPWEventLoopLagHigh: p99 above 100 ms
LOOP_LAG_HELP = (
    "How late each process's event loop ran a timer that was due (cpw_event_loop_lag_seconds, sampled every "
    "20 ms): every request, job and broker confirm of the process waits as long. High with a core to spare: "
    "bursts of work hold the loop; high with the CPU saturated: the process needs another replica. Alert: "
    "CPWEventLoopLagHigh (p99 above 100 ms)."
)


@dataclass
class Panel:
    """One panel: what the SDK needs plus the layout, so the layout is decided in one place."""

    kind: str  # "timeseries" | "stat"
    title: str
    description: str
    queries: list[Query]
    unit: str
    thresholds: db.ThresholdsConfig = field(default_factory=lambda: NEUTRAL)
    width: int = 12
    height: int = 8
    stack: bool = False
    threshold_lines: bool = False
    mappings: list[dm.ValueMapping] | None = None
    min: float | None = None
    max: float | None = None

    def build(self, panel_id: int) -> db.Panel:
        builder: stat.Panel | timeseries.Panel
        if self.kind == "stat":
            builder = (
                stat.Panel()
                .graph_mode(cm.BigValueGraphMode.AREA)
                .color_mode(cm.BigValueColorMode.VALUE)
                .text_mode(cm.BigValueTextMode.AUTO)
                .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            )
        else:
            builder = (
                timeseries.Panel()
                .fill_opacity(25 if self.stack else 10)
                .legend(
                    cb.VizLegendOptions()
                    .display_mode(cm.LegendDisplayMode.TABLE)
                    .placement(cm.LegendPlacement.BOTTOM)
                    .show_legend(True)
                    .calcs(["lastNotNull", "max"])
                )
                .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
            )
            if self.stack:
                builder = builder.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
            if self.threshold_lines:
                builder = builder.thresholds_style(
                    cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)
                )
        builder = (
            builder.id(panel_id)
            .title(self.title)
            .description(self.description)
            .datasource(DATASOURCE)
            .unit(self.unit)
            .thresholds(self.thresholds)
            .span(self.width)
            .height(self.height)
        )
        if self.mappings:
            builder = builder.mappings(self.mappings)
        if self.min is not None:
            builder = builder.min(self.min)
        if self.max is not None:
            builder = builder.max(self.max)
        for index, (expr, legend) in enumerate(self.queries):
            query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + index))
            builder = builder.with_target(query)
        return builder


def stat_panel(
    title: str,
    unit: str,
    description: str,
    *queries: Query,
    thresholds: db.ThresholdsConfig = NEUTRAL,
    width: int = 4,
    height: int = 5,
    mappings: list[dm.ValueMapping] | None = None,
    min: float | None = None,
    max: float | None = None,
) -> Panel:
    """A big last value with a sparkline: the headline numbers of a summary row (4 wide, 5 high by default)."""
    return Panel(
        "stat", title, description, list(queries), unit, thresholds, width, height, mappings=mappings, min=min, max=max
    )


def timeseries_panel(
    title: str,
    unit: str,
    description: str,
    *queries: Query,
    thresholds: db.ThresholdsConfig = NEUTRAL,
    stack: bool = False,
    threshold_lines: bool = False,
    min: float | None = None,
    max: float | None = None,
) -> Panel:
    """Lines over time, half the dashboard wide; `stack` for parts of a whole, `threshold_lines` to draw the
    alert's thresholds as dashed lines."""
    return Panel(
        "timeseries",
        title,
        description,
        list(queries),
        unit,
        thresholds,
        stack=stack,
        threshold_lines=threshold_lines,
        min=min,
        max=max,
    )


def up_down_stat(title: str, description: str, metric: str, up: str, down: str) -> Panel:
    """A 0/1 gauge per selected worker pod, shown as words (1 green, 0 red) rather than a number."""
    mapping = dm.ValueMap(
        options={
            "1": dm.ValueMappingResult(text=up, color="green", index=0),
            "0": dm.ValueMappingResult(text=down, color="red", index=1),
        }
    )
    query = (f"{metric}{{{WORKER_POD}}}", "{{pod}}")
    return stat_panel(title, "none", description, query, thresholds=AT_LEAST_ONE, width=6, mappings=[mapping])


def query_variable(name: str, label: str, description: str, query: str, *, multi: bool) -> db.QueryVariable:
    """A dropdown filled from Prometheus label values, refreshed with the time range; `multi` adds "All"."""
    variable = (
        db.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        variable = variable.multi(True).include_all(True).all_value(".*")
    return variable


def variables(*, with_pod: bool) -> list[db.QueryVariable | db.DatasourceVariable]:
    result: list[db.QueryVariable | db.DatasourceVariable] = [
        db.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .description("The Prometheus that scrapes the workers, the API, RabbitMQ, kube-state-metrics and KEDA."),
        query_variable(
            "namespace",
            "Namespace",
            "The Kubernetes namespace of the release (the scrape's `namespace` label).",
            "label_values(cpw_build_info, namespace)",
            multi=False,
        ),
        query_variable(
            "job",
            "Job",
            "Scrape job(s) of the API and worker pods (ServiceMonitor: the Service; PodMonitor: ns/name).",
            'label_values(cpw_build_info{namespace="$namespace"}, job)',
            multi=True,
        ),
    ]
    if with_pod:
        result.append(
            query_variable(
                "pod",
                "Worker pod",
                "Worker pods of the release.",
                'label_values(cpw_worker_ready{namespace="$namespace", job=~"$job"}, pod)',
                multi=True,
            )
        )
    return result


def dashboard(
    uid: str, title: str, description: str, rows: Iterable[tuple[str, list[Panel]]], *, with_pod: bool
) -> db.Dashboard:
    builder = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["controlplane-workers"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .link(
            db.DashboardLink("controlplane-workers")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["controlplane-workers"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    for variable in variables(with_pod=with_pod):
        builder = builder.with_variable(variable)
    panel_id = 1
    for row_title, panels in rows:
        builder = builder.with_row(db.Row(row_title).id(panel_id))
        panel_id += 1
        for panel in panels:
            builder = builder.with_panel(panel.build(panel_id))
            panel_id += 1
    return builder


# ---------------------------------------------------------------------------------------------------------
# Fleet overview
# ---------------------------------------------------------------------------------------------------------


def fleet_overview() -> db.Dashboard:
    jobs_total = "cpw_worker_jobs_total"
    finished_jobs = f"{SCOPE}, {FINISHED}"
    succeeded_jobs = f'{SCOPE}, outcome="succeeded"'
    finished = per_second(jobs_total, finished_jobs)
    success_ratio = f"{per_second(jobs_total, succeeded_jobs)} / {finished}"
    success_ratio_by_operation = (
        f"{per_second(jobs_total, succeeded_jobs, 'operation')} / {per_second(jobs_total, finished_jobs, 'operation')}"
    )
    # An operation without failures has no failed series: `or <all> * 0` shows it at 0%.
    operation = "provider_namespace, resource_type, operation"
    finished_by_operation = per_second(jobs_total, finished_jobs, operation)
    failure_ratio_by_operation = (
        f"({per_second(jobs_total, f'{SCOPE}, {FAILED}', operation)} or {finished_by_operation} * 0)"
        f" / {finished_by_operation}"
    )
    saturation = f"{gauge('cpw_worker_jobs_in_flight', SCOPE)} / {gauge('cpw_worker_capacity', SCOPE)}"
    # `or vector(0)`: with no 5xx answer at all there is no 5xx series; the panel shows 0%, not "No data"
    # (tests/observability/test_prometheus_e2e.py queries every panel on a live Prometheus).
    server_errors = per_second("cpw_api_requests_total", f'{SCOPE}, code=~"5.."')
    api_5xx = f"({server_errors} or vector(0)) / {per_second('cpw_api_requests_total', SCOPE)}"
    jobs_queue = f"{RABBIT}, {JOBS_QUEUE}"
    dlq = f"{RABBIT}, {DLQ}"
    hpa = "horizontalpodautoscaler"
    ratio_steps = steps((None, "red"), (0.9, "orange"), (0.99, "green"))

    summary = [
        stat_panel(
            "Success ratio",
            "percentunit",
            "Share of finished job attempts that succeeded (failed, error and timeout "
            "count against it; requeued and canceled attempts are left out). Alert: CPWJobFailureRatioHigh.",
            (success_ratio, "success"),
            thresholds=ratio_steps,
            min=0,
            max=1,
        ),
        stat_panel("Throughput", "ops", "Job attempts finished per second, all outcomes.", (finished, "attempts/s")),
        stat_panel(
            "Saturation",
            "percentunit",
            "Jobs running / job slots of the running workers (cpw_worker_jobs_in_flight / "
            "cpw_worker_capacity). Alert: CPWWorkersSaturated at 90%.",
            (saturation, "saturation"),
            thresholds=steps((None, "green"), (0.7, "orange"), (0.9, "red")),
            min=0,
            max=1,
        ),
        stat_panel(
            "Ready jobs",
            "short",
            "Jobs waiting on the job queue (RabbitMQ messages_ready). "
            "Alerts: CPWJobBacklogGrowing, CPWJobsWaitingWithoutConsumers.",
            (gauge("rabbitmq_detailed_queue_messages_ready", jobs_queue), "ready"),
            thresholds=steps((None, "green"), (25, "orange"), (100, "red")),
        ),
        stat_panel(
            "Dead-lettered jobs",
            "short",
            "Messages in the dead-letter queue; `cpw dlq list` shows them. Alert: CPWDeadLetterQueueNotEmpty.",
            (gauge("rabbitmq_detailed_queue_messages", dlq), "dlq"),
            thresholds=NONE_WANTED,
        ),
        stat_panel(
            "Ready workers",
            "short",
            "Worker pods that accept jobs (cpw_worker_ready). Alert: CPWNoReadyWorkers.",
            (gauge("cpw_worker_ready", SCOPE), "ready"),
            thresholds=AT_LEAST_ONE,
        ),
    ]
    throughput = [
        timeseries_panel(
            "Job attempts by outcome",
            "ops",
            "Attempts finished per second by outcome: succeeded; failed "
            "(PermanentError); error (other exceptions, retried); timeout; canceled (on request); requeued "
            "(handed back on shutdown).",
            (per_second(jobs_total, SCOPE, "outcome"), "{{outcome}}"),
            stack=True,
        ),
        timeseries_panel(
            "Success ratio",
            "percentunit",
            "Share of finished attempts that succeeded, overall and per operation. The dashed lines mark 90% and 99%.",
            (success_ratio, "all"),
            (success_ratio_by_operation, "{{operation}}"),
            thresholds=ratio_steps,
            threshold_lines=True,
            min=0,
            max=1,
        ),
        timeseries_panel(
            "Job duration",
            "s",
            "p50 / p95 / p99 of one attempt's duration (provider time), finished "
            "attempts. Alert: CPWJobDurationHigh (p95 above 15 minutes).",
            *quantiles("cpw_worker_job_duration_seconds", finished_jobs),
            thresholds=JOB_DURATION,
            threshold_lines=True,
        ),
        timeseries_panel(
            "Queue wait",
            "s",
            "p50 / p95 / p99 of the time from submission to the start of the first "
            "attempt. Alert: CPWQueueWaitHigh (p95 above 2 minutes).",
            *quantiles("cpw_worker_queue_wait_seconds", SCOPE),
            thresholds=QUEUE_WAIT,
            threshold_lines=True,
        ),
        timeseries_panel(
            "Retries, dead letters, cancellations",
            "ops",
            "Attempts scheduled again (retries), jobs sent "
            "to the dead-letter queue by reason, jobs canceled on request — per second.",
            (per_second("cpw_worker_retries_total", SCOPE), "retries"),
            (per_second("cpw_worker_dead_lettered_total", SCOPE, "reason"), "dead-lettered {{reason}}"),
            (per_second("cpw_worker_canceled_total", SCOPE), "canceled"),
        ),
        timeseries_panel(
            "Failure ratio by operation",
            "percentunit",
            "Share of finished attempts that failed (failed, error, "
            "timeout), per provider namespace / resource type / operation. Alert: CPWJobFailureRatioHigh "
            "(10% warning, 50% critical).",
            (failure_ratio_by_operation, "{{provider_namespace}}/{{resource_type}} {{operation}}"),
            thresholds=steps((None, "green"), (0.1, "orange"), (0.5, "red")),
            threshold_lines=True,
            min=0,
            max=1,
        ),
    ]
    queue = [
        timeseries_panel(
            "Job queue depth",
            "short",
            "Messages on the job queue from RabbitMQ's exporter: ready (waiting "
            "for a worker) and unacked (delivered to a worker, running). KEDA scales on ready + unacked.",
            (gauge("rabbitmq_detailed_queue_messages_ready", jobs_queue, "queue"), "ready {{queue}}"),
            (gauge("rabbitmq_detailed_queue_messages_unacked", jobs_queue, "queue"), "unacked {{queue}}"),
            stack=True,
        ),
        timeseries_panel(
            "Dead-letter queue",
            "short",
            "Messages in the dead-letter queue; they stay until redriven (`cpw dlq redrive`) or purged.",
            (gauge("rabbitmq_detailed_queue_messages", dlq, "queue"), "{{queue}}"),
            thresholds=NONE_WANTED,
        ),
        timeseries_panel(
            "Consumers on the job queue",
            "short",
            "Consumers RabbitMQ counts on the job queue (one per worker "
            "process). Zero with ready jobs fires CPWJobsWaitingWithoutConsumers.",
            (gauge("rabbitmq_detailed_queue_consumers", jobs_queue, "queue"), "{{queue}}"),
            thresholds=AT_LEAST_ONE,
        ),
        timeseries_panel(
            "Arrivals vs. completions",
            "ops",
            "Jobs accepted by the API per second vs. job attempts the "
            "workers finished per second: arrivals above completions grow the backlog.",
            (per_second("cpw_api_submissions_total", SCOPE), "submitted"),
            (finished, "finished attempts"),
        ),
    ]
    scaling = [
        timeseries_panel(
            "Workers and KEDA replicas",
            "short",
            "Worker pods scraped and ready, and the KEDA-made HPA's "
            "desired / current / maximum replicas (kube-state-metrics). Alert: CPWWorkersAtMaxReplicas.",
            (gauge("cpw_worker_ready", SCOPE, op="count"), "worker pods"),
            (gauge("cpw_worker_ready", SCOPE), "ready"),
            (gauge("kube_horizontalpodautoscaler_status_desired_replicas", HPA, hpa), "desired ({{" + hpa + "}})"),
            (gauge("kube_horizontalpodautoscaler_status_current_replicas", HPA, hpa), "current ({{" + hpa + "}})"),
            (gauge("kube_horizontalpodautoscaler_spec_max_replicas", HPA, hpa), "max ({{" + hpa + "}})"),
        ),
        timeseries_panel(
            "Job slots",
            "short",
            "Jobs running vs. job slots over all workers. "
            "Alert: CPWWorkersSaturated when in flight reaches 90% of capacity for 15 minutes.",
            (gauge("cpw_worker_jobs_in_flight", SCOPE), "in flight"),
            (gauge("cpw_worker_capacity", SCOPE), "capacity"),
        ),
        timeseries_panel(
            "KEDA scaler",
            "short",
            "The queue length KEDA reads for the workers' ScaledObject and its "
            "errors per second (KEDA operator metrics). Alert: CPWKedaScalerErrors.",
            (keda("sum by (scaledObject) (keda_scaler_metrics_value{sel})"), "metric {{scaledObject}}"),
            (
                keda("sum by (scaledObject) (rate(keda_scaled_object_errors_total{sel}[$__rate_interval]))"),
                "errors/s {{scaledObject}}",
            ),
        ),
        timeseries_panel(
            "Broker connection",
            "short",
            "Workers connected to RabbitMQ out of those scraped, and broker "
            "reconnects per second. Alert: CPWBrokerUnreachable.",
            (gauge("cpw_worker_broker_connected", SCOPE), "connected"),
            (gauge("cpw_worker_broker_connected", SCOPE, op="count"), "workers"),
            (per_second("cpw_worker_broker_reconnects_total", SCOPE), "reconnects/s"),
        ),
    ]
    api = [
        timeseries_panel(
            "API requests by code",
            "reqps",
            "HTTP requests the API answered per second, by status code.",
            (per_second("cpw_api_requests_total", SCOPE, "code"), "{{code}}"),
            stack=True,
        ),
        timeseries_panel(
            "API latency",
            "s",
            "p50 / p95 / p99 of write requests (submissions answer 202 once the "
            "broker confirmed), and p95 of reads (may long-poll with ?wait=). Alert: CPWApiLatencyHigh (write "
            "p95 above 1s).",
            *quantiles("cpw_api_request_duration_seconds", f"{SCOPE}, {WRITES}"),
            (quantile(0.95, "cpw_api_request_duration_seconds", f'{SCOPE}, method="GET"'), "reads p95"),
            thresholds=NONE_WANTED,
            threshold_lines=True,
        ),
        timeseries_panel(
            "API errors",
            "percentunit",
            "Share of 5xx answers (503: the broker did not confirm) and refusals per "
            "second by reason (401 unauthorized, 413 too large, 429 rate limited, 503 broker unavailable, ...). "
            "Alert: CPWApiErrorRatioHigh (1% warning, 5% critical).",
            (api_5xx, "5xx ratio"),
            (per_second("cpw_api_rejections_total", SCOPE, "reason"), "{{reason}}/s"),
            thresholds=steps((None, "green"), (0.01, "orange"), (0.05, "red")),
        ),
        timeseries_panel(
            "Submissions by priority",
            "ops",
            "Jobs accepted (confirmed by the broker) per second, by priority (9 is the most urgent).",
            (per_second("cpw_api_submissions_total", SCOPE, "priority"), "priority {{priority}}"),
            stack=True,
        ),
        timeseries_panel(
            "Status index",
            "short",
            "Jobs held in each API replica's status index, and the age of the last "
            "event it applied from the results stream (grows while no job changes state).",
            (gauge("cpw_api_index_jobs", SCOPE, "pod"), "jobs {{pod}}"),
            (gauge("cpw_api_index_lag_seconds", SCOPE, "pod", op="max"), "lag {{pod}}"),
        ),
        timeseries_panel(
            "Status index memory",
            "bytes",
            "Estimated bytes each API replica's status index holds, and its bound (half of the container's memory "
            "limit above a 96 MiB baseline, or CPW_API_INDEX_MAX_BYTES). At the bound the oldest finished jobs are "
            "evicted (404 OperationExpired). Alert: CPWApiIndexEvicting.",
            (gauge("cpw_api_index_bytes", SCOPE, "pod"), "used {{pod}}"),
            (gauge("cpw_api_index_max_bytes", SCOPE, "pod", op="max"), "bound {{pod}}"),
        ),
        stat_panel(
            "API replicas ready",
            "short",
            "API pods connected with their index rebuilt (cpw_api_ready). Alert: CPWApiNotReady.",
            (gauge("cpw_api_ready", SCOPE), "ready"),
            thresholds=AT_LEAST_ONE,
            width=12,
            height=8,
        ),
        timeseries_panel(
            "API event-loop lag p99",
            "s",
            LOOP_LAG_HELP,
            # the API pods only: the workers export the same metric (worker detail shows theirs)
            (
                f"{quantile(0.99, 'cpw_event_loop_lag_seconds', SCOPE, 'pod')} "
                f"and on (pod) {gauge('cpw_api_ready', SCOPE, 'pod', op='group')}",
                "{{pod}}",
            ),
            thresholds=LOOP_LAG,
            threshold_lines=True,
        ),
    ]
    projector = projector_row()
    return dashboard(
        "cpw-fleet-overview",
        "controlplane-workers / fleet overview",
        "The whole fleet of one release: job throughput and outcomes, durations, queue depth, dead letters, "
        "autoscaling and the API. Alerts: alerts/controlplane-workers.rules.yaml; runbooks: alerts/runbooks.md.",
        [
            ("Summary", summary),
            ("Jobs", throughput),
            ("Queue (RabbitMQ)", queue),
            ("Scaling", scaling),
            ("API", api),
            ("Operation store (PostgreSQL projector)", projector),
        ],
        with_pod=False,
    )


def projector_row() -> list[Panel]:
    """`cpw indexer` (CPW_API_STORE=postgresql): empty for a release on the stream store."""
    commit_delay = "cpw_projector_commit_delay_seconds"
    return [
        stat_panel(
            "Projector leading",
            "short",
            "Projector pods holding the advisory lock (exactly one writes; the other stands by, Ready), out of the "
            "pods scraped. Alerts: CPWProjectorNoLeader (none leads), CPWProjectorNotRunning (none scraped while the "
            "API is on PostgreSQL).",
            (gauge("cpw_projector_leader", SCOPE), "leading"),
            (gauge("cpw_projector_leader", SCOPE, op="count"), "pods"),
            thresholds=AT_LEAST_ONE,
            width=6,
            height=8,
        ),
        stat_panel(
            "Projector failovers (24h)",
            "short",
            "Times a standby took the lock in the last 24 hours (the active pod's PostgreSQL session ended: a "
            "restart, a node loss, a connection cut).",
            (f"sum(increase(cpw_projector_failovers_total{{{SCOPE}}}[1d]))", "failovers"),
            width=6,
            height=8,
        ),
        timeseries_panel(
            "Projector throughput",
            "ops",
            "Job events written to PostgreSQL per second, transactions per second (each with its stream offset), "
            "and malformed stream messages skipped per second.",
            (per_second("cpw_projector_events_total", SCOPE), "events/s"),
            (per_second("cpw_projector_transactions_total", SCOPE), "transactions/s"),
            (per_second("cpw_projector_malformed_total", SCOPE), "malformed/s"),
        ),
        timeseries_panel(
            "Projector lag",
            "s",
            "How late API replicas other than the submitting one see a change: p50 / p95 / p99 of the time from a "
            "transaction's oldest event to its commit, and how long a received message has waited uncommitted. "
            "Alert: CPWProjectorLagHigh (either above 30s for 10m).",
            *quantiles(commit_delay, SCOPE),
            (gauge("cpw_projector_lag_seconds", SCOPE, op="max"), "waiting"),
            thresholds=steps((None, "green"), (30, "red")),
            threshold_lines=True,
        ),
        timeseries_panel(
            "Projector transactions",
            "s",
            "p50 / p95 / p99 of a transaction's time from BEGIN to COMMIT: PostgreSQL's share of the lag.",
            *quantiles("cpw_projector_batch_duration_seconds", SCOPE),
        ),
        timeseries_panel(
            "Projector batch size",
            "short",
            "Stream messages per transaction, on average and p95 (at most CPW_INDEXER_BATCH_MESSAGES): batches "
            "grow while the projector catches up, one message each when it keeps pace.",
            (
                f"{per_second('cpw_projector_batch_messages_sum', SCOPE)} "
                f"/ {per_second('cpw_projector_batch_messages_count', SCOPE)}",
                "average",
            ),
            (quantile(0.95, "cpw_projector_batch_messages", SCOPE), "p95"),
        ),
    ]


# ---------------------------------------------------------------------------------------------------------
# Worker detail (per pod)
# ---------------------------------------------------------------------------------------------------------


def worker_detail() -> db.Dashboard:
    pods = WORKER_POD
    heartbeat_age = f"time() - cpw_worker_last_heartbeat_timestamp_seconds{{{pods}}}"
    state = [
        up_down_stat(
            "Ready",
            "Whether each selected worker accepts jobs (cpw_worker_ready).",
            "cpw_worker_ready",
            "ready",
            "not ready",
        ),
        up_down_stat(
            "Broker",
            "Whether each selected worker is connected to RabbitMQ (cpw_worker_broker_connected).",
            "cpw_worker_broker_connected",
            "connected",
            "disconnected",
        ),
        stat_panel(
            "Heartbeat age",
            "s",
            "Seconds since each worker's last heartbeat (sent every 5s). Alert: CPWWorkerHeartbeatMissing above 60s.",
            (heartbeat_age, "{{pod}}"),
            thresholds=HEARTBEAT_AGE,
            width=6,
        ),
        stat_panel(
            "Uptime",
            "s",
            "Seconds since each worker process started (the seed's worker_uptime_seconds).",
            (f"worker_uptime_seconds{{{pods}}}", "{{pod}}"),
            width=6,
        ),
    ]
    jobs = [
        timeseries_panel(
            "In flight vs. capacity",
            "short",
            "Jobs each worker runs now and the jobs it runs at once (CPW_MAX_CONCURRENT_JOBS).",
            (gauge("cpw_worker_jobs_in_flight", pods, "pod"), "in flight {{pod}}"),
            (gauge("cpw_worker_capacity", pods, "pod"), "capacity {{pod}}"),
        ),
        timeseries_panel(
            "Attempts by outcome",
            "ops",
            "Job attempts each worker finished per second, by outcome.",
            (per_second("cpw_worker_jobs_total", pods, "pod, outcome"), "{{pod}} {{outcome}}"),
        ),
        timeseries_panel(
            "Job duration p95 by pod",
            "s",
            "95th percentile of an attempt's duration per worker "
            "(finished attempts). One slow pod points at its node or a stuck dependency connection.",
            (quantile(0.95, "cpw_worker_job_duration_seconds", f"{pods}, {FINISHED}", "pod"), "{{pod}}"),
            thresholds=JOB_DURATION,
            threshold_lines=True,
        ),
        timeseries_panel(
            "Job duration p95 by operation",
            "s",
            "95th percentile of an attempt's duration per provider "
            "namespace / resource type / operation, on the selected workers.",
            (
                quantile(
                    0.95,
                    "cpw_worker_job_duration_seconds",
                    f"{pods}, {FINISHED}",
                    "provider_namespace, resource_type, operation",
                ),
                "{{provider_namespace}}/{{resource_type}} {{operation}}",
            ),
            thresholds=JOB_DURATION,
            threshold_lines=True,
        ),
        timeseries_panel(
            "Queue wait p95 by pod",
            "s",
            "95th percentile of the wait from submission to the first attempt, for the jobs each worker started.",
            (quantile(0.95, "cpw_worker_queue_wait_seconds", pods, "pod"), "{{pod}}"),
            thresholds=QUEUE_WAIT,
            threshold_lines=True,
        ),
        timeseries_panel(
            "Finished jobs (seed counters)",
            "ops",
            "The seed's counters per worker: jobs finished (any "
            "terminal outcome) and jobs finished as Failed, per second.",
            (per_second("worker_jobs_processed_total", pods, "pod"), "processed {{pod}}"),
            (per_second("worker_jobs_failed_total", pods, "pod"), "failed {{pod}}"),
        ),
    ]
    delivery = [
        timeseries_panel(
            "Retries, dead letters, cancellations",
            "ops",
            "Per worker and second: attempts scheduled "
            "again, messages dead-lettered (by reason), jobs canceled on request.",
            (per_second("cpw_worker_retries_total", pods, "pod"), "retries {{pod}}"),
            (per_second("cpw_worker_dead_lettered_total", pods, "pod, reason"), "dead-lettered {{reason}} {{pod}}"),
            (per_second("cpw_worker_canceled_total", pods, "pod"), "canceled {{pod}}"),
        ),
        timeseries_panel(
            "Broker events",
            "ops",
            "Per worker and second: reconnects to RabbitMQ, deliveries flagged "
            "redelivered, acks lost on a dropped channel (the broker redelivers those jobs).",
            (per_second("cpw_worker_broker_reconnects_total", pods, "pod"), "reconnects {{pod}}"),
            (per_second("cpw_worker_redelivered_total", pods, "pod"), "redelivered {{pod}}"),
            (per_second("cpw_worker_ack_lost_total", pods, "pod"), "ack lost {{pod}}"),
        ),
        timeseries_panel(
            "Heartbeat age",
            "s",
            "Seconds since each worker's last heartbeat over time; a saw-tooth up to the heartbeat interval is normal.",
            (heartbeat_age, "{{pod}}"),
            thresholds=HEARTBEAT_AGE,
            threshold_lines=True,
        ),
        timeseries_panel(
            "Version",
            "short",
            "The controlplane-workers version each worker runs (cpw_build_info); two lines during a rollout.",
            (gauge("cpw_build_info", pods, "version", op="count"), "{{version}}"),
        ),
    ]
    process = [
        timeseries_panel(
            "CPU",
            "percentunit",
            "CPU seconds per second each worker process uses (prometheus-client's process collector).",
            (per_second("process_cpu_seconds_total", pods, "pod"), "{{pod}}"),
        ),
        timeseries_panel(
            "Memory",
            "bytes",
            "Resident memory of each worker process.",
            (gauge("process_resident_memory_bytes", pods, "pod"), "{{pod}}"),
        ),
        timeseries_panel(
            "Event-loop lag p99",
            "s",
            LOOP_LAG_HELP,
            (quantile(0.99, "cpw_event_loop_lag_seconds", pods, "pod"), "{{pod}}"),
            thresholds=LOOP_LAG,
            threshold_lines=True,
        ),
    ]
    return dashboard(
        "cpw-worker-detail",
        "controlplane-workers / worker detail",
        "One or several worker pods: state, heartbeats, jobs in flight, outcomes, durations, retries and broker "
        "events, CPU, memory and event-loop lag.",
        [("State", state), ("Jobs", jobs), ("Delivery", delivery), ("Process", process)],
        with_pod=True,
    )


DASHBOARDS = {
    "fleet-overview.json": fleet_overview,
    "worker-detail.json": worker_detail,
}


def render(build: db.Dashboard) -> str:
    return json.dumps(build.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def generate() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(make()) for name, make in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed dashboard differs from the code")
    parser.add_argument("--out", type=Path, default=HERE, help="directory of the JSON files (default: dashboards/)")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run `make dashboards`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
