"""The peer benchmark: alternating rounds over the five systems, then the report.

Phases (each system in a fresh vhost of the same RabbitMQ, its worker processes started anew):
1. throughput, `rounds` x (A B C D E): warm-up, then N jobs closed-loop; completed jobs/s, the submit
   phase, the worker's peak RSS; then, in another fresh vhost with no worker, submit-only jobs/s;
2. latency, one start per system: open-loop fixed-rate runs at each offered load, ascending;
3. scaling, `rounds` x (1 2 4) `cpw worker` processes on the SDK path.
Outputs: results.json, chart.png, the markdown tables (docs/benchmarks.md between markers) and the
`bench:` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.systems import CLASSES, SYSTEMS, ProjectHTTP, ProjectSDK, System, available
from tests.support.processes import ROOT

BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
PACKAGES = ["aio-pika", "aiormq", "uvloop", "celery", "kombu", "amqp", "taskiq", "taskiq-aio-pika", "uvicorn"]


def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(",") if v.strip())


@dataclass
class Config:
    jobs: int = 5000
    rounds: int = 3
    rates: tuple[int, ...] = (200, 500, 1000)
    latency_seconds: float = 5.0
    scaling: tuple[int, ...] = (1, 2, 4)
    systems: tuple[str, ...] = tuple(SYSTEMS)
    warmup: int = 200
    submit_only: bool = True

    @classmethod
    def from_env(cls) -> Config:
        e = os.environ.get
        return cls(
            jobs=int(e("CPW_BENCH_JOBS", "5000")),
            rounds=int(e("CPW_BENCH_ROUNDS", "3")),
            rates=_ints(e("CPW_BENCH_RATES", "200,500,1000")),
            latency_seconds=float(e("CPW_BENCH_LATENCY_SECONDS", "5")),
            scaling=_ints(e("CPW_BENCH_SCALING", "1,2,4")),
            systems=tuple(s for s in e("CPW_BENCH_SYSTEMS", ",".join(SYSTEMS)).split(",") if s),
        )


@dataclass
class Results:
    config: dict[str, Any]
    conditions: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    submit_only: dict[str, list[float]] = field(default_factory=dict)
    latency: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    scaling: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def conditions(endpoint: Any) -> dict[str, Any]:
    overview: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        overview = endpoint._request("GET", "/api/overview")  # type: ignore[assignment]
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "worker", "api-adapter"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if dirty:  # the processes run from the work tree: say when it is not the commit
        commit += " + uncommitted changes in worker/ or api-adapter/"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "rabbitmq": overview.get("rabbitmq_version"),
        "erlang": overview.get("erlang_version"),
        "packages": {p: _version(p) for p in PACKAGES},
        "commit": commit,
    }


def quiet_heap() -> None:
    """Leave the benchmark process's own heap (pytest, earlier rounds, every system's imports) out of
    the garbage collector's full collections during the next run, for every system alike.

    A full collection walks every tracked object; in this process that was 60-100 ms by the later
    rounds (gc.callbacks), and each one landed in some system's p99. What a system allocates during
    its own run is still collected as usual.
    """
    gc.collect()
    gc.freeze()


async def _with_system(endpoint: Any, tmp: Path, key: str, workers: int, body: Callable[[System], Any]) -> Any:
    vhost = endpoint.new_vhost()
    system = CLASSES[key](endpoint, vhost, tmp)
    quiet_heap()
    try:
        await system.start(workers)
        return await body(system)
    finally:
        await system.stop()
        endpoint.delete_vhost(vhost)


async def run(endpoint: Any, tmp: Path, config: Config, say: Callable[[str], None] = print) -> Results:
    results = Results(config=asdict(config), conditions=conditions(endpoint))
    systems = []
    for key in config.systems:
        reason = available(key)
        if reason:
            results.skipped[key] = reason
            say(f"bench: skipping {key}: {reason}")
        else:
            systems.append(key)

    for r in range(config.rounds):
        for key in systems:

            async def throughput(system: System) -> dict[str, float]:
                if config.warmup:
                    await system.closed(config.warmup, 64)
                before = system.cpu()
                closed = await system.closed(config.jobs)
                after = system.cpu()
                row = {
                    "jobs_per_s": closed.jobs_per_s,
                    "seconds": closed.seconds,
                    "submit_phase_jobs_per_s": closed.jobs / closed.submit_seconds,
                    "worker_peak_rss_mb": system.peak_rss_mb(),
                }
                if isinstance(system, ProjectHTTP):
                    row["api_peak_rss_mb"] = system.api_peak_rss_mb()
                for part in after:  # CPU ms per job of each process: where the 2 cores go
                    row[f"cpu_ms_per_job_{part}"] = 1000 * (after[part] - before[part]) / closed.jobs
                return row

            row = await _with_system(endpoint, tmp, key, 1, throughput)
            results.throughput.setdefault(key, []).append(row)
            say(
                f"  round {r + 1} {key:8s} {row['jobs_per_s']:7.0f} jobs/s  (submit phase "
                f"{row['submit_phase_jobs_per_s']:.0f}/s, "
                f"worker peak RSS {row['worker_peak_rss_mb']:.0f} MB)"
            )
            if config.submit_only:

                async def submit_only(system: System) -> float:
                    return config.jobs / await system.submit_only(config.jobs)

                rate = await _with_system(endpoint, tmp, key, 0, submit_only)
                results.submit_only.setdefault(key, []).append(rate)
                say(f"  round {r + 1} {key:8s} submit-only {rate:7.0f} jobs/s")

    if config.rates:
        for key in systems:

            async def latency(system: System, key: str = key) -> dict[str, dict[str, float]]:
                if config.warmup:
                    await system.closed(config.warmup, 64)
                out = {}
                for rate in config.rates:
                    run_ = await system.open_loop(rate, config.latency_seconds)
                    out[str(rate)] = {
                        "jobs": run_.jobs,
                        "p50_ms": run_.percentile(50) * 1000,
                        "p95_ms": run_.percentile(95) * 1000,
                        "p99_ms": run_.percentile(99) * 1000,
                        "max_ms": run_.latencies[-1] * 1000,
                        "completed_per_s": run_.completed_per_s,
                        "kept_up": run_.completed_per_s >= 0.95 * rate,
                    }
                    say(
                        f"  latency {key:8s} @{rate:5d}/s p50 {out[str(rate)]['p50_ms']:7.1f} "
                        f"p95 {out[str(rate)]['p95_ms']:7.1f} p99 {out[str(rate)]['p99_ms']:7.1f} ms"
                    )
                return out

            results.latency[key] = await _with_system(endpoint, tmp, key, 1, latency)

    if config.scaling and "project" in systems:
        for r in range(config.rounds):
            for workers in config.scaling:

                async def scaled(system: System, workers: int = workers) -> float:
                    if config.warmup:
                        await system.closed(config.warmup * workers, 64)
                    return (await system.closed(config.jobs)).jobs_per_s

                vhost = endpoint.new_vhost()
                system = ProjectSDK(endpoint, vhost, tmp)
                try:
                    await system.start(workers)
                    rate = await scaled(system)
                finally:
                    await system.stop()
                    endpoint.delete_vhost(vhost)
                results.scaling.setdefault(str(workers), []).append(rate)
                say(f"  round {r + 1} scaling {workers} worker(s) {rate:7.0f} jobs/s")
    results.conditions["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


# -- report
def median_of(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows) if rows else math.nan


def summary(results: Results) -> dict[str, Any]:
    out: dict[str, Any] = {"systems": {}}
    for key, rows in results.throughput.items():
        values = [row["jobs_per_s"] for row in rows]
        entry = {
            "label": SYSTEMS[key],
            "jobs_per_s_median": statistics.median(values),
            "jobs_per_s_min": min(values),
            "jobs_per_s_max": max(values),
            "submit_phase_jobs_per_s_median": median_of(rows, "submit_phase_jobs_per_s"),
            "worker_peak_rss_mb": median_of(rows, "worker_peak_rss_mb"),
        }
        if key == "http":
            entry["api_peak_rss_mb"] = median_of(rows, "api_peak_rss_mb")
        for part in ("broker", "worker", "client", "api"):
            if rows and f"cpu_ms_per_job_{part}" in rows[0]:
                entry[f"cpu_ms_per_job_{part}"] = median_of(rows, f"cpu_ms_per_job_{part}")
        if results.submit_only.get(key):
            entry["submit_only_jobs_per_s_median"] = statistics.median(results.submit_only[key])
        if key in results.latency:
            entry["latency"] = results.latency[key]
        out["systems"][key] = entry
    s = out["systems"]
    project = s.get("project", {}).get("jobs_per_s_median", math.nan)
    for peer in ("raw", "celery", "taskiq", "http"):
        name = f"ratio_{peer}"
        out[name] = project / s[peer]["jobs_per_s_median"] if peer in s else math.nan
    out["scaling"] = {
        k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in results.scaling.items()
    }
    return out


def bench_line(result_summary: dict[str, Any]) -> str:
    s = result_summary["systems"]

    def rate(key: str) -> str:
        return f"{s[key]['jobs_per_s_median']:.0f}" if key in s else "nan"

    return (
        f"bench: project_jobs_per_s={rate('project')} http_jobs_per_s={rate('http')} "
        f"raw_aio_pika_jobs_per_s={rate('raw')} celery_jobs_per_s={rate('celery')} "
        f"taskiq_jobs_per_s={rate('taskiq')} ratio_raw={result_summary['ratio_raw']:.2f} "
        f"ratio_celery={result_summary['ratio_celery']:.2f} ratio_taskiq={result_summary['ratio_taskiq']:.2f}"
    )


def _ms(value: float) -> str:
    return "-" if value is None or math.isnan(value) else (f"{value:.0f}" if value >= 100 else f"{value:.1f}")


def markdown(results: Results, result_summary: dict[str, Any]) -> str:
    c, cfg = results.conditions, results.config
    rates = [str(r) for r in cfg["rates"]]
    lines = [
        f"Run of {c['date']} (commit {c['commit']}): {cfg['jobs']:,} jobs x {cfg['rounds']} "
        "alternating rounds, "
        f"{c['cpus']} CPUs ({c['cpu_model']}), {c['memory_gb']} GB, RabbitMQ {c['rabbitmq']} on Erlang "
        f"{c['erlang']}, Python {c['python']}; load average {c['load_average_at_start']} at start, "
        f"{c.get('load_average_at_end')} at end.",
        "",
        "| system | completed jobs/s, median (min-max) | submit-only jobs/s | "
        + " | ".join(f"p50 / p95 / p99 ms @ {r}/s" for r in rates)
        + " | worker peak RSS MB |",
        "| --- | --- | --- | " + " | ".join("---" for _ in rates) + " | --- |",
    ]
    for key, e in result_summary["systems"].items():
        lat = e.get("latency", {})
        cells = [
            f"{_ms(lat[r]['p50_ms'])} / {_ms(lat[r]['p95_ms'])} / {_ms(lat[r]['p99_ms'])}"
            + ("" if lat[r]["kept_up"] else f" (fell behind: {lat[r]['completed_per_s']:,.0f}/s)")
            if r in lat
            else "-"
            for r in rates
        ]
        rss = f"{e['worker_peak_rss_mb']:.0f}"
        if key == "http":
            rss += f" (+ API {e['api_peak_rss_mb']:.0f})"
        bold = "**" if key == "project" else ""
        lines.append(
            f"| {bold}{e['label']}{bold} | {bold}{e['jobs_per_s_median']:,.0f}{bold} "
            f"({e['jobs_per_s_min']:,.0f}-{e['jobs_per_s_max']:,.0f}) | "
            f"{e.get('submit_only_jobs_per_s_median', math.nan):,.0f} | " + " | ".join(cells) + f" | {rss} |"
        )
    lines += [
        "",
        "CPU per completed job (ms, median of the rounds; `/proc` user+system time during the "
        "throughput run; the submitter is the benchmark process):",
        "",
        "| system | broker | worker | submitter | API | total |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in result_summary["systems"].values():
        parts = [e.get(f"cpu_ms_per_job_{p}") for p in ("broker", "worker", "client", "api")]
        total = sum(p for p in parts if p is not None)
        lines.append(
            f"| {e['label']} | " + " | ".join("-" if p is None else f"{p:.3f}" for p in parts) + f" | {total:.3f} |"
        )
    lines += [
        "",
        "Ratios (the SDK path's median over the peer's, same run): "
        + ", ".join(
            f"{name.replace('ratio_', '')} {result_summary[name]:.2f}"
            for name in ("ratio_raw", "ratio_taskiq", "ratio_celery", "ratio_http")
            if not math.isnan(result_summary[name])
        )
        + ".",
    ]
    if result_summary["scaling"]:
        one = result_summary["scaling"].get("1", {}).get("median")
        lines += [
            "",
            "| `cpw worker` processes (SDK path) | completed jobs/s, median (min-max) | vs 1 process |",
            "| --- | --- | --- |",
        ]
        for workers, v in result_summary["scaling"].items():
            rel = f"{v['median'] / one:.2f}x" if one else "-"
            lines.append(f"| {workers} | {v['median']:,.0f} ({v['min']:,.0f}-{v['max']:,.0f}) | {rel} |")
    if results.skipped:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in results.skipped.items())]
    lines += [
        "",
        "![throughput and latency](../build/bench/chart.png) (`build/bench/chart.png`, "
        "not committed; the numbers are in `build/bench/results.json`)",
    ]
    return "\n".join(lines)


def chart(result_summary: dict[str, Any], rates: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = result_summary["systems"]
    keys = list(systems)
    panels = 1 + len(rates)
    cols = 2
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 4.2 * rows), squeeze=False)
    ax = axes[0][0]
    med = [systems[k]["jobs_per_s_median"] for k in keys]
    err = [
        [m - systems[k]["jobs_per_s_min"] for m, k in zip(med, keys, strict=True)],
        [systems[k]["jobs_per_s_max"] - m for m, k in zip(med, keys, strict=True)],
    ]
    colors = ["#1f77b4" if k in ("project", "http") else "#999999" for k in keys]
    ax.bar(keys, med, yerr=err, capsize=4, color=colors)
    for i, m in enumerate(med):
        ax.text(i, m, f"{m:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_title("completed jobs/s (median, min-max), one worker process")
    ax.set_ylabel("jobs/s")
    for n, rate in enumerate(rates, start=1):
        ax = axes[n // cols][n % cols]
        width = 0.26
        for j, (p, shade) in enumerate((("p50_ms", 0.45), ("p95_ms", 0.7), ("p99_ms", 0.95))):
            values = [systems[k].get("latency", {}).get(str(rate), {}).get(p, math.nan) for k in keys]
            ax.bar(
                [i + (j - 1) * width for i in range(len(keys))],
                values,
                width,
                label=p.replace("_ms", ""),
                color=plt.cm.Blues(shade),
            )
        ax.set_xticks(range(len(keys)), keys)
        ax.set_yscale("log")
        ax.axhline(50, color="red", linewidth=0.8, linestyle="--", label="50 ms (SDK goal at 500/s)")
        ax.set_title(f"submit -> completion latency at {rate} jobs/s offered (ms, log)")
        ax.legend(fontsize=8)
    for n in range(panels, rows * cols):
        axes[n // cols][n % cols].axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: Results, out_dir: Path, doc: Path | None) -> str:
    result_summary = summary(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(
        json.dumps({"summary": result_summary, **asdict(results)}, indent=2, default=str, allow_nan=True)
    )
    table = markdown(results, result_summary)
    (out_dir / "table.md").write_text(table + "\n")
    try:
        chart(result_summary, list(results.config["rates"]), out_dir / "chart.png")
    except ImportError:
        pass  # matplotlib is in the bench extra
    if doc is not None:
        text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            text = f"{head}{BEGIN}\n{table}\n{END}{tail}"
        else:
            text = f"{text.rstrip()}\n\n{BEGIN}\n{table}\n{END}\n"
        doc.write_text(text)
    line = bench_line(result_summary)
    (out_dir / "bench.txt").write_text(line + "\n")
    return line


def run_sync(endpoint: Any, tmp: Path, config: Config, say: Callable[[str], None] = print) -> Results:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(endpoint, tmp, config, say))
