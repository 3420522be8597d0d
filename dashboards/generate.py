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


def quantiles(metric: str, selector: str, by: str = "") -> list[tuple[str, str]]:
    by_clause = f"{by}, le" if by else "le"
    prefix = "{{" + by + "}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({by_clause}) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
            f"{prefix}p{int(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def steps(*pairs: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in pairs])
    )


NEUTRAL = steps((None, "green"))


@dataclass
class Panel:
    """One panel: what the SDK needs plus the layout, so the layout is decided in one place."""

    kind: str  # "timeseries" | "stat"
    title: str
    description: str
    queries: list[tuple[str, str]]  # (expr, legend)
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


def up_down(up: str, down: str) -> list[dm.ValueMapping]:
    return [
        dm.ValueMap(
            options={
                "1": dm.ValueMappingResult(text=up, color="green", index=0),
                "0": dm.ValueMappingResult(text=down, color="red", index=1),
            }
        )
    ]


def variables(*, with_pod: bool) -> list[db.QueryVariable | db.DatasourceVariable]:
    result: list[db.QueryVariable | db.DatasourceVariable] = [
        db.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .description("The Prometheus that scrapes the workers, the API, RabbitMQ, kube-state-metrics and KEDA."),
        db.QueryVariable("namespace")
        .label("Namespace")
        .description("The Kubernetes namespace of the release (the scrape's `namespace` label).")
        .datasource(DATASOURCE)
        .query("label_values(cpw_build_info, namespace)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC),
        db.QueryVariable("job")
        .label("Job")
        .description("Scrape job(s) of the API and worker pods (ServiceMonitor: the Service; PodMonitor: ns/name).")
        .datasource(DATASOURCE)
        .query('label_values(cpw_build_info{namespace="$namespace"}, job)')
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .sort(dm.VariableSort.ALPHABETICAL_ASC),
    ]
    if with_pod:
        result.append(
            db.QueryVariable("pod")
            .label("Worker pod")
            .description("Worker pods of the release.")
            .datasource(DATASOURCE)
            .query('label_values(cpw_worker_ready{namespace="$namespace", job=~"$job"}, pod)')
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
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
    finished = f"sum(rate(cpw_worker_jobs_total{{{SCOPE}, {FINISHED}}}[$__rate_interval]))"
    succeeded = f'sum(rate(cpw_worker_jobs_total{{{SCOPE}, outcome="succeeded"}}[$__rate_interval]))'
    success_ratio = f"{succeeded} / {finished}"
    saturation = f"sum(cpw_worker_jobs_in_flight{{{SCOPE}}}) / sum(cpw_worker_capacity{{{SCOPE}}})"
    # `or vector(0)`: with no 5xx answer at all there is no 5xx series; the panel shows 0%, not "No data"
    # (tests/observability/test_prometheus_e2e.py queries every panel on a live Prometheus).
    api_5xx = (
        f'(sum(rate(cpw_api_requests_total{{{SCOPE}, code=~"5.."}}[$__rate_interval])) or vector(0))'
        f" / sum(rate(cpw_api_requests_total{{{SCOPE}}}[$__rate_interval]))"
    )
    ratio_steps = steps((None, "red"), (0.9, "orange"), (0.99, "green"))
    saturation_steps = steps((None, "green"), (0.7, "orange"), (0.9, "red"))

    summary = [
        Panel(
            "stat",
            "Success ratio",
            "Share of finished job attempts that succeeded (failed, error and timeout "
            "count against it; requeued and canceled attempts are left out). Alert: CPWJobFailureRatioHigh.",
            [(success_ratio, "success")],
            "percentunit",
            ratio_steps,
            width=4,
            height=5,
            min=0,
            max=1,
        ),
        Panel(
            "stat",
            "Throughput",
            "Job attempts finished per second, all outcomes.",
            [(finished, "attempts/s")],
            "ops",
            width=4,
            height=5,
        ),
        Panel(
            "stat",
            "Saturation",
            "Jobs running / job slots of the running workers (cpw_worker_jobs_in_flight / "
            "cpw_worker_capacity). Alert: CPWWorkersSaturated at 90%.",
            [(saturation, "saturation")],
            "percentunit",
            saturation_steps,
            width=4,
            height=5,
            min=0,
            max=1,
        ),
        Panel(
            "stat",
            "Ready jobs",
            "Jobs waiting on the job queue (RabbitMQ messages_ready). "
            "Alerts: CPWJobBacklogGrowing, CPWJobsWaitingWithoutConsumers.",
            [(f"sum(rabbitmq_detailed_queue_messages_ready{{{RABBIT}, {JOBS_QUEUE}}})", "ready")],
            "short",
            steps((None, "green"), (25, "orange"), (100, "red")),
            width=4,
            height=5,
        ),
        Panel(
            "stat",
            "Dead-lettered jobs",
            "Messages in the dead-letter queue; `cpw dlq list` shows them. Alert: CPWDeadLetterQueueNotEmpty.",
            [(f"sum(rabbitmq_detailed_queue_messages{{{RABBIT}, {DLQ}}})", "dlq")],
            "short",
            steps((None, "green"), (1, "red")),
            width=4,
            height=5,
        ),
        Panel(
            "stat",
            "Ready workers",
            "Worker pods that accept jobs (cpw_worker_ready). Alert: CPWNoReadyWorkers.",
            [(f"sum(cpw_worker_ready{{{SCOPE}}})", "ready")],
            "short",
            steps((None, "red"), (1, "green")),
            width=4,
            height=5,
        ),
    ]
    throughput = [
        Panel(
            "timeseries",
            "Job attempts by outcome",
            "Attempts finished per second by outcome: succeeded; failed "
            "(PermanentError); error (other exceptions, retried); timeout; canceled (on request); requeued "
            "(handed back on shutdown).",
            [(f"sum by (outcome) (rate(cpw_worker_jobs_total{{{SCOPE}}}[$__rate_interval]))", "{{outcome}}")],
            "ops",
            stack=True,
        ),
        Panel(
            "timeseries",
            "Success ratio",
            "Share of finished attempts that succeeded, overall and per operation. The dashed lines mark 90% and 99%.",
            [
                (success_ratio, "all"),
                (
                    f'sum by (operation) (rate(cpw_worker_jobs_total{{{SCOPE}, outcome="succeeded"}}[$__rate_interval]))'
                    f" / sum by (operation) (rate(cpw_worker_jobs_total{{{SCOPE}, {FINISHED}}}[$__rate_interval]))",
                    "{{operation}}",
                ),
            ],
            "percentunit",
            ratio_steps,
            threshold_lines=True,
            min=0,
            max=1,
        ),
        Panel(
            "timeseries",
            "Job duration",
            "p50 / p95 / p99 of one attempt's duration (provider time), finished "
            "attempts. Alert: CPWJobDurationHigh (p95 above 15 minutes).",
            quantiles("cpw_worker_job_duration_seconds", f"{SCOPE}, {FINISHED}"),
            "s",
            steps((None, "green"), (900, "red")),
            threshold_lines=True,
        ),
        Panel(
            "timeseries",
            "Queue wait",
            "p50 / p95 / p99 of the time from submission to the start of the first "
            "attempt. Alert: CPWQueueWaitHigh (p95 above 2 minutes).",
            quantiles("cpw_worker_queue_wait_seconds", SCOPE),
            "s",
            steps((None, "green"), (120, "red")),
            threshold_lines=True,
        ),
        Panel(
            "timeseries",
            "Retries, dead letters, cancellations",
            "Attempts scheduled again (retries), jobs sent "
            "to the dead-letter queue by reason, jobs canceled on request — per second.",
            [
                (f"sum(rate(cpw_worker_retries_total{{{SCOPE}}}[$__rate_interval]))", "retries"),
                (
                    f"sum by (reason) (rate(cpw_worker_dead_lettered_total{{{SCOPE}}}[$__rate_interval]))",
                    "dead-lettered {{reason}}",
                ),
                (f"sum(rate(cpw_worker_canceled_total{{{SCOPE}}}[$__rate_interval]))", "canceled"),
            ],
            "ops",
        ),
        Panel(
            "timeseries",
            "Failure ratio by operation",
            "Share of finished attempts that failed (failed, error, "
            "timeout), per provider namespace / resource type / operation. Alert: CPWJobFailureRatioHigh "
            "(10% warning, 50% critical).",
            # An operation without failures has no failed series: `or <all> * 0` shows it at 0%.
            [
                (
                    f"(sum by (provider_namespace, resource_type, operation) (rate(cpw_worker_jobs_total{{{SCOPE}, {FAILED}}}[$__rate_interval]))"
                    f" or sum by (provider_namespace, resource_type, operation) (rate(cpw_worker_jobs_total{{{SCOPE}, {FINISHED}}}[$__rate_interval])) * 0)"
                    f" / sum by (provider_namespace, resource_type, operation) (rate(cpw_worker_jobs_total{{{SCOPE}, {FINISHED}}}[$__rate_interval]))",
                    "{{provider_namespace}}/{{resource_type}} {{operation}}",
                )
            ],
            "percentunit",
            steps((None, "green"), (0.1, "orange"), (0.5, "red")),
            threshold_lines=True,
            min=0,
            max=1,
        ),
    ]
    queue = [
        Panel(
            "timeseries",
            "Job queue depth",
            "Messages on the job queue from RabbitMQ's exporter: ready (waiting "
            "for a worker) and unacked (delivered to a worker, running). KEDA scales on ready + unacked.",
            [
                (
                    f"sum by (queue) (rabbitmq_detailed_queue_messages_ready{{{RABBIT}, {JOBS_QUEUE}}})",
                    "ready {{queue}}",
                ),
                (
                    f"sum by (queue) (rabbitmq_detailed_queue_messages_unacked{{{RABBIT}, {JOBS_QUEUE}}})",
                    "unacked {{queue}}",
                ),
            ],
            "short",
            stack=True,
        ),
        Panel(
            "timeseries",
            "Dead-letter queue",
            "Messages in the dead-letter queue; they stay until redriven (`cpw dlq redrive`) or purged.",
            [(f"sum by (queue) (rabbitmq_detailed_queue_messages{{{RABBIT}, {DLQ}}})", "{{queue}}")],
            "short",
            steps((None, "green"), (1, "red")),
        ),
        Panel(
            "timeseries",
            "Consumers on the job queue",
            "Consumers RabbitMQ counts on the job queue (one per worker "
            "process). Zero with ready jobs fires CPWJobsWaitingWithoutConsumers.",
            [(f"sum by (queue) (rabbitmq_detailed_queue_consumers{{{RABBIT}, {JOBS_QUEUE}}})", "{{queue}}")],
            "short",
            steps((None, "red"), (1, "green")),
        ),
        Panel(
            "timeseries",
            "Arrivals vs. completions",
            "Jobs accepted by the API per second vs. job attempts the "
            "workers finished per second: arrivals above completions grow the backlog.",
            [
                (f"sum(rate(cpw_api_submissions_total{{{SCOPE}}}[$__rate_interval]))", "submitted"),
                (finished, "finished attempts"),
            ],
            "ops",
        ),
    ]
    scaling = [
        Panel(
            "timeseries",
            "Workers and KEDA replicas",
            "Worker pods scraped and ready, and the KEDA-made HPA's "
            "desired / current / maximum replicas (kube-state-metrics). Alert: CPWWorkersAtMaxReplicas.",
            [
                (f"count(cpw_worker_ready{{{SCOPE}}})", "worker pods"),
                (f"sum(cpw_worker_ready{{{SCOPE}}})", "ready"),
                (
                    f"sum by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_desired_replicas{{{HPA}}})",
                    "desired ({{horizontalpodautoscaler}})",
                ),
                (
                    f"sum by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_current_replicas{{{HPA}}})",
                    "current ({{horizontalpodautoscaler}})",
                ),
                (
                    f"sum by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_spec_max_replicas{{{HPA}}})",
                    "max ({{horizontalpodautoscaler}})",
                ),
            ],
            "short",
        ),
        Panel(
            "timeseries",
            "Job slots",
            "Jobs running vs. job slots over all workers. "
            "Alert: CPWWorkersSaturated when in flight reaches 90% of capacity for 15 minutes.",
            [
                (f"sum(cpw_worker_jobs_in_flight{{{SCOPE}}})", "in flight"),
                (f"sum(cpw_worker_capacity{{{SCOPE}}})", "capacity"),
            ],
            "short",
        ),
        Panel(
            "timeseries",
            "KEDA scaler",
            "The queue length KEDA reads for the workers' ScaledObject and its "
            "errors per second (KEDA operator metrics). Alert: CPWKedaScalerErrors.",
            [
                (keda("sum by (scaledObject) (keda_scaler_metrics_value{sel})"), "metric {{scaledObject}}"),
                (
                    keda("sum by (scaledObject) (rate(keda_scaled_object_errors_total{sel}[$__rate_interval]))"),
                    "errors/s {{scaledObject}}",
                ),
            ],
            "short",
        ),
        Panel(
            "timeseries",
            "Broker connection",
            "Workers connected to RabbitMQ out of those scraped, and broker "
            "reconnects per second. Alert: CPWBrokerUnreachable.",
            [
                (f"sum(cpw_worker_broker_connected{{{SCOPE}}})", "connected"),
                (f"count(cpw_worker_broker_connected{{{SCOPE}}})", "workers"),
                (f"sum(rate(cpw_worker_broker_reconnects_total{{{SCOPE}}}[$__rate_interval]))", "reconnects/s"),
            ],
            "short",
        ),
    ]
    api = [
        Panel(
            "timeseries",
            "API requests by code",
            "HTTP requests the API answered per second, by status code.",
            [(f"sum by (code) (rate(cpw_api_requests_total{{{SCOPE}}}[$__rate_interval]))", "{{code}}")],
            "reqps",
            stack=True,
        ),
        Panel(
            "timeseries",
            "API latency",
            "p50 / p95 / p99 of write requests (submissions answer 202 once the "
            "broker confirmed), and p95 of reads (may long-poll with ?wait=). Alert: CPWApiLatencyHigh (write "
            "p95 above 1s).",
            [
                *quantiles("cpw_api_request_duration_seconds", f"{SCOPE}, {WRITES}"),
                (
                    f'histogram_quantile(0.95, sum by (le) (rate(cpw_api_request_duration_seconds_bucket{{{SCOPE}, method="GET"}}[$__rate_interval])))',
                    "reads p95",
                ),
            ],
            "s",
            steps((None, "green"), (1, "red")),
            threshold_lines=True,
        ),
        Panel(
            "timeseries",
            "API errors",
            "Share of 5xx answers (503: the broker did not confirm) and refusals per "
            "second by reason (401 unauthorized, 413 too large, 429 rate limited, 503 broker unavailable, ...). "
            "Alert: CPWApiErrorRatioHigh (1% warning, 5% critical).",
            [
                (api_5xx, "5xx ratio"),
                (f"sum by (reason) (rate(cpw_api_rejections_total{{{SCOPE}}}[$__rate_interval]))", "{{reason}}/s"),
            ],
            "percentunit",
            steps((None, "green"), (0.01, "orange"), (0.05, "red")),
        ),
        Panel(
            "timeseries",
            "Submissions by priority",
            "Jobs accepted (confirmed by the broker) per second, by priority (9 is the most urgent).",
            [
                (
                    f"sum by (priority) (rate(cpw_api_submissions_total{{{SCOPE}}}[$__rate_interval]))",
                    "priority {{priority}}",
                )
            ],
            "ops",
            stack=True,
        ),
        Panel(
            "timeseries",
            "Status index",
            "Jobs held in each API replica's status index, and the age of the last "
            "event it applied from the results stream (grows while no job changes state).",
            [
                (f"sum by (pod) (cpw_api_index_jobs{{{SCOPE}}})", "jobs {{pod}}"),
                (f"max by (pod) (cpw_api_index_lag_seconds{{{SCOPE}}})", "lag {{pod}}"),
            ],
            "short",
        ),
        Panel(
            "stat",
            "API replicas ready",
            "API pods connected with their index rebuilt (cpw_api_ready). Alert: CPWApiNotReady.",
            [(f"sum(cpw_api_ready{{{SCOPE}}})", "ready")],
            "short",
            steps((None, "red"), (1, "green")),
            width=12,
        ),
    ]
    return dashboard(
        "cpw-fleet-overview",
        "controlplane-workers / fleet overview",
        "The whole fleet of one release: job throughput and outcomes, durations, queue depth, dead letters, "
        "autoscaling and the API. Alerts: alerts/controlplane-workers.rules.yaml; runbooks: alerts/runbooks.md.",
        [("Summary", summary), ("Jobs", throughput), ("Queue (RabbitMQ)", queue), ("Scaling", scaling), ("API", api)],
        with_pod=False,
    )


# ---------------------------------------------------------------------------------------------------------
# Worker detail (per pod)
# ---------------------------------------------------------------------------------------------------------


def worker_detail() -> db.Dashboard:
    rate = "[$__rate_interval]"
    state = [
        Panel(
            "stat",
            "Ready",
            "Whether each selected worker accepts jobs (cpw_worker_ready).",
            [(f"cpw_worker_ready{{{WORKER_POD}}}", "{{pod}}")],
            "none",
            steps((None, "red"), (1, "green")),
            width=6,
            height=5,
            mappings=up_down("ready", "not ready"),
        ),
        Panel(
            "stat",
            "Broker",
            "Whether each selected worker is connected to RabbitMQ (cpw_worker_broker_connected).",
            [(f"cpw_worker_broker_connected{{{WORKER_POD}}}", "{{pod}}")],
            "none",
            steps((None, "red"), (1, "green")),
            width=6,
            height=5,
            mappings=up_down("connected", "disconnected"),
        ),
        Panel(
            "stat",
            "Heartbeat age",
            "Seconds since each worker's last heartbeat (sent every 5s). Alert: CPWWorkerHeartbeatMissing above 60s.",
            [(f"time() - cpw_worker_last_heartbeat_timestamp_seconds{{{WORKER_POD}}}", "{{pod}}")],
            "s",
            steps((None, "green"), (15, "orange"), (60, "red")),
            width=6,
            height=5,
        ),
        Panel(
            "stat",
            "Uptime",
            "Seconds since each worker process started (the seed's worker_uptime_seconds).",
            [(f"worker_uptime_seconds{{{WORKER_POD}}}", "{{pod}}")],
            "s",
            width=6,
            height=5,
        ),
    ]
    jobs = [
        Panel(
            "timeseries",
            "In flight vs. capacity",
            "Jobs each worker runs now and the jobs it runs at once (CPW_MAX_CONCURRENT_JOBS).",
            [
                (f"sum by (pod) (cpw_worker_jobs_in_flight{{{WORKER_POD}}})", "in flight {{pod}}"),
                (f"sum by (pod) (cpw_worker_capacity{{{WORKER_POD}}})", "capacity {{pod}}"),
            ],
            "short",
        ),
        Panel(
            "timeseries",
            "Attempts by outcome",
            "Job attempts each worker finished per second, by outcome.",
            [(f"sum by (pod, outcome) (rate(cpw_worker_jobs_total{{{WORKER_POD}}}{rate}))", "{{pod}} {{outcome}}")],
            "ops",
        ),
        Panel(
            "timeseries",
            "Job duration p95 by pod",
            "95th percentile of an attempt's duration per worker "
            "(finished attempts). One slow pod points at its node or a stuck dependency connection.",
            [
                (
                    f"histogram_quantile(0.95, sum by (pod, le) (rate(cpw_worker_job_duration_seconds_bucket{{{WORKER_POD}, {FINISHED}}}{rate})))",
                    "{{pod}}",
                )
            ],
            "s",
            steps((None, "green"), (900, "red")),
            threshold_lines=True,
        ),
        Panel(
            "timeseries",
            "Job duration p95 by operation",
            "95th percentile of an attempt's duration per provider "
            "namespace / resource type / operation, on the selected workers.",
            [
                (
                    f"histogram_quantile(0.95, sum by (provider_namespace, resource_type, operation, le) "
                    f"(rate(cpw_worker_job_duration_seconds_bucket{{{WORKER_POD}, {FINISHED}}}{rate})))",
                    "{{provider_namespace}}/{{resource_type}} {{operation}}",
                )
            ],
            "s",
            steps((None, "green"), (900, "red")),
            threshold_lines=True,
        ),
        Panel(
            "timeseries",
            "Queue wait p95 by pod",
            "95th percentile of the wait from submission to the first attempt, for the jobs each worker started.",
            [
                (
                    f"histogram_quantile(0.95, sum by (pod, le) (rate(cpw_worker_queue_wait_seconds_bucket{{{WORKER_POD}}}{rate})))",
                    "{{pod}}",
                )
            ],
            "s",
            steps((None, "green"), (120, "red")),
            threshold_lines=True,
        ),
        Panel(
            "timeseries",
            "Finished jobs (seed counters)",
            "The seed's counters per worker: jobs finished (any "
            "terminal outcome) and jobs finished as Failed, per second.",
            [
                (f"sum by (pod) (rate(worker_jobs_processed_total{{{WORKER_POD}}}{rate}))", "processed {{pod}}"),
                (f"sum by (pod) (rate(worker_jobs_failed_total{{{WORKER_POD}}}{rate}))", "failed {{pod}}"),
            ],
            "ops",
        ),
    ]
    delivery = [
        Panel(
            "timeseries",
            "Retries, dead letters, cancellations",
            "Per worker and second: attempts scheduled "
            "again, messages dead-lettered (by reason), jobs canceled on request.",
            [
                (f"sum by (pod) (rate(cpw_worker_retries_total{{{WORKER_POD}}}{rate}))", "retries {{pod}}"),
                (
                    f"sum by (pod, reason) (rate(cpw_worker_dead_lettered_total{{{WORKER_POD}}}{rate}))",
                    "dead-lettered {{reason}} {{pod}}",
                ),
                (f"sum by (pod) (rate(cpw_worker_canceled_total{{{WORKER_POD}}}{rate}))", "canceled {{pod}}"),
            ],
            "ops",
        ),
        Panel(
            "timeseries",
            "Broker events",
            "Per worker and second: reconnects to RabbitMQ, deliveries flagged "
            "redelivered, acks lost on a dropped channel (the broker redelivers those jobs).",
            [
                (
                    f"sum by (pod) (rate(cpw_worker_broker_reconnects_total{{{WORKER_POD}}}{rate}))",
                    "reconnects {{pod}}",
                ),
                (f"sum by (pod) (rate(cpw_worker_redelivered_total{{{WORKER_POD}}}{rate}))", "redelivered {{pod}}"),
                (f"sum by (pod) (rate(cpw_worker_ack_lost_total{{{WORKER_POD}}}{rate}))", "ack lost {{pod}}"),
            ],
            "ops",
        ),
        Panel(
            "timeseries",
            "Heartbeat age",
            "Seconds since each worker's last heartbeat over time; a saw-tooth up to the heartbeat interval is normal.",
            [(f"time() - cpw_worker_last_heartbeat_timestamp_seconds{{{WORKER_POD}}}", "{{pod}}")],
            "s",
            steps((None, "green"), (15, "orange"), (60, "red")),
            threshold_lines=True,
        ),
        Panel(
            "timeseries",
            "Version",
            "The controlplane-workers version each worker runs (cpw_build_info); two lines during a rollout.",
            [(f"count by (version) (cpw_build_info{{{WORKER_POD}}})", "{{version}}")],
            "short",
        ),
    ]
    process = [
        Panel(
            "timeseries",
            "CPU",
            "CPU seconds per second each worker process uses (prometheus-client's process collector).",
            [(f"sum by (pod) (rate(process_cpu_seconds_total{{{WORKER_POD}}}{rate}))", "{{pod}}")],
            "percentunit",
        ),
        Panel(
            "timeseries",
            "Memory",
            "Resident memory of each worker process.",
            [(f"sum by (pod) (process_resident_memory_bytes{{{WORKER_POD}}})", "{{pod}}")],
            "bytes",
        ),
    ]
    return dashboard(
        "cpw-worker-detail",
        "controlplane-workers / worker detail",
        "One or several worker pods: state, heartbeats, jobs in flight, outcomes, durations, retries and broker "
        "events, CPU and memory.",
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
