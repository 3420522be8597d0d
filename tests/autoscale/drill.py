"""The autoscaling drill: the model of KEDA + HPA (model.py), fed by a real RabbitMQ's management API, starts
and stops real `cpw worker` processes (SIGTERM on scale-in, so the drain runs) while a load generator
submits jobs.

Time is compressed through chart values (pollingInterval, cooldownPeriod, behavior windows and periods) and
the HPA sync period (a kube-controller-manager flag, so a parameter of the model). Every scenario renders the
chart with its values and takes everything from the rendered objects: the ScaledObject for KEDA and the HPA,
the broker Secret's management URL for the scaler, the worker container's CPW_* settings for the processes."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controlplane_workers import JobStatus
from tests.autoscale.chart import Rendered, autoscaling_values, render
from tests.autoscale.model import Autoscaler, Decision
from tests.support.harness import client, request
from tests.support.processes import CpwProcess, worker_env

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "autoscale"
NS, TYPE = "Test.Scripted", "things"
# The drill's broker refreshes queue counts every second (RabbitMQ's default is 5 s); a burst is visible to
# the scaler at most this long after it was published.
STATS_GRANULARITY = 1.0
BROKER_CONFIG = [
    "collect_statistics_interval = 250",
    "management.sample_retention_policies.global.minute = 1",
    "management.sample_retention_policies.basic.minute = 1",
    "management.sample_retention_policies.detailed.10 = 1",
]

# Chart values for compressed time: the chart's defaults divided by 15 (polling 15 -> 1, HPA sync 15 -> 1,
# scale-up period 30 -> 2), except the waits, cut harder so a drill takes a minute (cooldown and scale-down
# window 300 -> 10, scale-down period 60 -> 4).
COMPRESSED = {
    "pollingInterval": 1,
    "cooldownPeriod": 10,
    "behavior": {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 2},
                {"type": "Pods", "value": 4, "periodSeconds": 2},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": 10,
            "selectPolicy": "Min",
            "policies": [
                {"type": "Pods", "value": 1, "periodSeconds": 4},
                {"type": "Percent", "value": 10, "periodSeconds": 4},
            ],
        },
    },
}
HPA_SYNC_PERIOD = 1.0


@dataclass
class Phase:
    """Load: `jobs` jobs running `script`, all at once (rate None) or evenly spaced at `rate` per second."""

    jobs: int
    script: str = "sleep:0.05"
    rate: float | None = None


@dataclass
class Scenario:
    name: str
    load: list[Phase]
    autoscaling: dict[str, Any]
    workers: dict[str, Any] = field(default_factory=dict)
    hpa_sync_period: float = HPA_SYNC_PERIOD
    deadline: float = 240.0  # seconds for the whole scenario


@dataclass
class Sample:
    t: float
    messages: float | None
    ready: float | None
    unacked: float | None
    desired: int
    running: int  # worker processes counted as replicas (not terminating)
    ready_workers: int
    draining: int  # terminating (SIGTERM sent, not exited yet)
    done: int


@dataclass
class Stopped:
    worker_id: str
    signalled_at: float
    exited_at: float
    exit_code: int
    was_ready: bool
    in_flight: int | None = None  # jobs running when the drain began (from the worker's log)
    processed: int | None = None  # jobs the worker finished in its life


def _drain_log(path: Path) -> tuple[int | None, int | None]:
    """The worker's own account of its drain: in-flight jobs at SIGTERM, jobs processed in total."""
    in_flight = processed = None
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None, None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("message") == "draining":
            in_flight = record.get("in_flight")
        elif record.get("message") == "worker stopped":
            processed = record.get("processed")
    return in_flight, processed


@dataclass
class Outcome:
    name: str
    min: int
    max: int
    polling_interval: float
    cooldown_period: float
    drain_timeout: float
    jobs: int
    succeeded: int
    lost: int
    duplicates: int
    peak: int
    peak_running: int
    final: int
    load_started_s: float
    first_seen_s: float | None  # the management API first reported the load
    first_scale_s: float | None  # first decision above min
    time_to_max_s: float | None
    time_to_max_ready_s: float | None  # ... and all of them ready (process start and broker connect included)
    drain_s: float | None  # load start -> last job terminal
    back_to_min_s: float | None  # last job terminal -> replicas back at min (and no process left draining)
    in_flight_at_scale_in: int  # jobs running on workers when they got SIGTERM
    processed_by_workers: int  # sum of every worker's finished jobs: == jobs when none ran twice
    scale_ups_after_first_down: int
    reversals: int
    stopped: list[Stopped]
    decisions: list[dict[str, Any]]
    samples: list[Sample]

    def line(self, label: str = "") -> str:
        tag = f"autoscale[{label}]" if label else "autoscale"
        return (
            f"{tag}: peak={self.peak} max={self.max} final={self.final} min={self.min} lost={self.lost} "
            f"time_to_max_s={_fmt(self.time_to_max_s)} drain_s={_fmt(self.drain_s)}"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(v: float | None) -> str:
    return "na" if v is None else f"{v:.1f}"


class Fleet:
    """Worker processes standing in for the Deployment's pods. `replicas` is what the scale subresource would
    say: processes started and not being terminated. Scale-in picks like a ReplicaSet: not-ready pods first,
    then the youngest."""

    def __init__(self, amqp_url: str, env: dict[str, str], log_dir: Path, grace: float) -> None:
        self.amqp_url, self.env, self.log_dir, self.grace = amqp_url, env, log_dir, grace
        self.live: list[tuple[CpwProcess, str]] = []
        self.ready: set[str] = set()
        self.draining: dict[str, asyncio.Task[None]] = {}
        self.stopped: list[Stopped] = []
        self.started = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.clock: Callable[[], float] = time.monotonic

    @property
    def replicas(self) -> int:
        return len(self.live)

    def scale_to(self, n: int) -> None:
        while len(self.live) < n:
            self.started += 1
            wid = f"w{self.started}"
            proc = CpwProcess(
                "worker",
                worker_env(self.amqp_url, CPW_WORKER_ID=wid, **self.env),
                self.log_dir / f"{wid}.log",
            ).start()
            self.live.append((proc, wid))
            self._spawn(self._watch_ready(proc, wid))
        while len(self.live) > n:
            victim = self._pick_victim()
            self.live.remove(victim)
            proc, wid = victim
            proc.signal(signal.SIGTERM)
            self.draining[wid] = self._spawn(self._watch_exit(proc, wid, self.clock(), wid in self.ready))
            self.ready.discard(wid)

    def _pick_victim(self) -> tuple[CpwProcess, str]:
        not_ready = [p for p in self.live if p[1] not in self.ready]
        pool = not_ready or self.live
        return max(pool, key=lambda p: p[0].started_at)

    def _spawn(self, coro) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch_ready(self, proc: CpwProcess, wid: str) -> None:
        try:
            await asyncio.to_thread(proc.wait_ready, 60.0)
        except (TimeoutError, RuntimeError):
            return
        if any(w == wid for _, w in self.live):
            self.ready.add(wid)

    async def _watch_exit(self, proc: CpwProcess, wid: str, at: float, was_ready: bool) -> None:
        try:
            code = await asyncio.to_thread(proc.wait, self.grace)
        except Exception:  # the kubelet's SIGKILL after terminationGracePeriodSeconds
            proc.kill()
            code = -9
        in_flight, processed = _drain_log(proc.log_path)
        self.stopped.append(Stopped(wid, at, self.clock(), code, was_ready, in_flight, processed))
        self.draining.pop(wid, None)

    async def settle(self) -> None:
        if self.draining:
            await asyncio.gather(*self.draining.values(), return_exceptions=True)

    async def shutdown(self) -> None:
        self.scale_to(0)
        await self.settle()
        for task in list(self._tasks):
            task.cancel()


class QueueReader:
    """What KEDA's rabbitmq scaler (protocol http) reads: GET /api/queues/{vhost}/{queue}."""

    def __init__(self, rendered: Rendered) -> None:
        parts = urllib.parse.urlsplit(rendered.management_url)
        self.url = rendered.spec.trigger.queue_url(rendered.management_url)
        self.http = httpx.AsyncClient(
            auth=(urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or "")),
            timeout=5,
        )

    async def read(self) -> dict[str, Any] | None:
        try:
            r = await self.http.get(self.url)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    async def close(self) -> None:
        await self.http.aclose()


async def run_scenario(
    scenario: Scenario,
    amqp_url: str,
    management_url: str,
    *,
    log_dir: Path,
    live: bool = False,
    tick: float = 0.05,
    sample_every: float = 0.25,
) -> Outcome:
    values = autoscaling_values(amqp_url, management_url, scenario.autoscaling, **scenario.workers)
    rendered = render(values)
    spec = rendered.spec
    auto = Autoscaler(spec, hpa_sync_period=scenario.hpa_sync_period)
    drain_timeout = float(rendered.worker_env.get("CPW_DRAIN_TIMEOUT", "60"))
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    fleet = Fleet(rendered.amqp_url, rendered.worker_env, log_dir, float(rendered.termination_grace_seconds))
    reader = QueueReader(rendered)
    total = sum(p.jobs for p in scenario.load)
    done_at: dict[str, float] = {}
    results: dict[str, Any] = {}
    samples: list[Sample] = []
    decisions: list[Decision] = []
    view = LiveView(scenario, spec, total) if live else None
    t0 = time.monotonic()

    def now() -> float:
        return time.monotonic() - t0

    fleet.clock = now
    load_started = load_finished = None
    final = 0
    async with client(rendered.amqp_url) as queue:

        async def track(job_id: str) -> None:
            results[job_id] = await queue.get_job_result(job_id, timeout=scenario.deadline)
            done_at[job_id] = now()

        trackers: list[asyncio.Task[None]] = []

        async def generate() -> None:
            nonlocal load_started, load_finished
            load_started = now()
            n = 0
            for phase in scenario.load:
                if phase.rate is None:
                    ids = await asyncio.gather(
                        *(
                            queue.submit_job(NS, TYPE, "create", request(f"j{n + i}", phase.script))
                            for i in range(phase.jobs)
                        )
                    )
                    trackers.extend(asyncio.create_task(track(j)) for j in ids)
                    n += phase.jobs
                    continue
                start = now()
                for i in range(phase.jobs):
                    delay = start + i / phase.rate - now()
                    if delay > 0:
                        await asyncio.sleep(delay)  # the load's own clock: jobs evenly spaced
                    job_id = await queue.submit_job(NS, TYPE, "create", request(f"j{n}", phase.script))
                    trackers.append(asyncio.create_task(track(job_id)))
                    n += 1
            load_finished = now()

        def metric_of(q: dict[str, Any] | None) -> float | None:
            return None if q is None else spec.trigger.metric(q)

        def apply(d: Decision) -> None:
            decisions.append(d)
            if d.desired != fleet.replicas:
                fleet.scale_to(d.desired)

        generator = asyncio.create_task(generate())
        auto.start(now(), sync_offset=scenario.hpa_sync_period / 2)
        next_sample = 0.0
        last_q: dict[str, Any] | None = None
        try:
            if view:
                view.start()
            while True:
                t = now()
                if t > scenario.deadline:
                    raise TimeoutError(f"scenario {scenario.name} did not settle in {scenario.deadline}s")
                if t >= auto.next_poll:
                    apply(auto.keda_poll(t, fleet.replicas, metric_of(await reader.read())))
                if t >= auto.next_sync:
                    apply(auto.hpa_sync(now(), fleet.replicas, metric_of(await reader.read())))
                if t >= next_sample:
                    next_sample = t + sample_every
                    last_q = await reader.read()
                    samples.append(
                        Sample(
                            round(now(), 3),
                            *(
                                None if last_q is None else last_q.get(k)
                                for k in ("messages", "messages_ready", "messages_unacknowledged")
                            ),
                            desired=fleet.replicas,
                            running=fleet.replicas,
                            ready_workers=len(fleet.ready),
                            draining=len(fleet.draining),
                            done=len(done_at),
                        )
                    )
                    if view:
                        view.update(samples[-1], decisions[-1] if decisions else None)
                all_done = generator.done() and len(done_at) == total
                if (
                    all_done
                    and fleet.replicas == spec.min_replicas
                    and not fleet.draining
                    and (spec.min_replicas > 0 or last_q is not None and not last_q.get("messages"))
                    and _settled(decisions, spec.min_replicas, now(), auto)
                ):
                    break
                await asyncio.sleep(tick)  # the autoscaler's clock (the system under test polls)
            generator.result()
            final = fleet.replicas
        finally:
            if view:
                view.stop()
            generator.cancel()
            for task in trackers:
                task.cancel()
            await fleet.shutdown()
            await reader.close()
        duplicates = queue.index.duplicates

    return _outcome(
        scenario,
        rendered,
        fleet,
        samples,
        decisions,
        results,
        done_at,
        total,
        duplicates,
        load_started or 0.0,
        drain_timeout,
        final,
    )


def _settled(decisions: list[Decision], floor: int, t: float, auto: Autoscaler) -> bool:
    """At min, and one more KEDA poll and HPA sync have passed without a change (nothing pending)."""
    if not decisions:
        return False
    last_change = max((d.at for d in decisions if d.desired != d.current), default=0.0)
    return t - last_change > max(auto.spec.polling_interval, auto.hpa_sync_period) + 0.1


def _outcome(
    scenario: Scenario,
    rendered: Rendered,
    fleet: Fleet,
    samples: list[Sample],
    decisions: list[Decision],
    results: dict[str, Any],
    done_at: dict[str, float],
    total: int,
    duplicates: int,
    load_started: float,
    drain_timeout: float,
    final: int,
) -> Outcome:
    spec = rendered.spec
    changes = [d for d in decisions if d.desired != d.current]
    succeeded = sum(1 for r in results.values() if r is not None and r.status is JobStatus.SUCCEEDED)
    lost = total - sum(1 for r in results.values() if r is not None and r.terminal)
    first_seen = next((s.t for s in samples if s.messages), None)
    first_scale = next((d.at for d in changes if d.desired > spec.min_replicas), None)
    at_max = next((d.at for d in changes if d.desired >= spec.max_replicas), None)
    max_ready = next((s.t for s in samples if s.ready_workers >= spec.max_replicas), None)
    last_done = max(done_at.values()) if len(done_at) == total else None
    back = changes[-1].at if changes and changes[-1].desired == spec.min_replicas else None
    directions = [1 if d.desired > d.current else -1 for d in changes]
    reversals = sum(1 for a, b in zip(directions, directions[1:], strict=False) if a != b)
    first_down = next((i for i, x in enumerate(directions) if x < 0), None)
    ups_after = 0 if first_down is None else sum(1 for x in directions[first_down:] if x > 0)
    return Outcome(
        name=scenario.name,
        min=spec.min_replicas,
        max=spec.max_replicas,
        polling_interval=spec.polling_interval,
        cooldown_period=spec.cooldown_period,
        drain_timeout=drain_timeout,
        jobs=total,
        succeeded=succeeded,
        lost=lost,
        duplicates=duplicates,
        peak=max((d.desired for d in decisions), default=0),
        peak_running=max((s.running for s in samples), default=0),
        final=final,
        load_started_s=load_started,
        first_seen_s=None if first_seen is None else first_seen - load_started,
        first_scale_s=None if first_scale is None else first_scale - load_started,
        time_to_max_s=None if at_max is None else at_max - load_started,
        time_to_max_ready_s=None if max_ready is None else max_ready - load_started,
        drain_s=None if last_done is None else last_done - load_started,
        back_to_min_s=None if back is None or last_done is None else back - last_done,
        in_flight_at_scale_in=sum(s.in_flight or 0 for s in fleet.stopped),
        processed_by_workers=sum(s.processed or 0 for s in fleet.stopped),
        scale_ups_after_first_down=ups_after,
        reversals=reversals,
        stopped=list(fleet.stopped),
        decisions=[asdict(d) for d in changes],
        samples=samples,
    )


# -- the live view
# ----------------------------------------------------------------------------------------------


class LiveView:
    """A rich table refreshed as samples come in: depth, replicas, workers, jobs done, the last decision."""

    def __init__(self, scenario: Scenario, spec, total: int) -> None:
        from rich.console import Console
        from rich.live import Live

        self.scenario, self.spec, self.total = scenario, spec, total
        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)
        self.history: list[Sample] = []
        self.last: Decision | None = None

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.update(self._render())
        self.live.stop()
        if not self.console.is_terminal:
            self.console.line()  # what follows starts on a line of its own

    def update(self, sample: Sample, decision: Decision | None) -> None:
        self.history.append(sample)
        self.last = decision
        self.live.update(self._render())

    def _render(self):
        from rich.panel import Panel
        from rich.table import Table

        s = self.history[-1] if self.history else None
        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right", style="bold")
        table.add_column()
        if s is not None:
            depth = s.messages or 0
            width = 40
            scale = max(1.0, max((h.messages or 0) for h in self.history))
            table.add_row("t", f"{s.t:6.1f} s")
            table.add_row(
                "queue",
                f"{int(depth):5d} [cyan]{'█' * int(width * depth / scale)}[/] "
                f"(ready {s.ready or 0:.0f}, unacked {s.unacked or 0:.0f})",
            )
            bar = (
                "[green]■[/]" * s.ready_workers
                + "[yellow]■[/]" * (s.running - s.ready_workers)
                + "[red]□[/]" * s.draining
                + "·" * max(0, self.spec.max_replicas - s.running)
            )
            table.add_row(
                "replicas",
                f"{s.running} of {self.spec.min_replicas}..{self.spec.max_replicas}  {bar}  "
                f"(ready {s.ready_workers}, terminating {s.draining})",
            )
            table.add_row("jobs", f"{s.done} / {self.total} terminal")
            table.add_row("depth", _spark([h.messages or 0 for h in self.history[-60:]]))
            table.add_row("replicas", _spark([h.running for h in self.history[-60:]], top=self.spec.max_replicas))
        if self.last is not None:
            d = self.last
            table.add_row("last", f"{d.by} at {d.at:.1f}s: {d.current} -> {d.desired} ({d.reason})")
        return Panel(table, title=f"autoscale drill: {self.scenario.name}", expand=False)


def _spark(values: list[float], top: float | None = None) -> str:
    blocks = " ▁▂▃▄▅▆▇█"
    hi = top or max(values or [1]) or 1
    return "".join(blocks[min(8, math.ceil(8 * v / hi))] if v > 0 else blocks[0] for v in values)


# -- the picture
# ------------------------------------------------------------------------------------------------


def save_timeline(outcome: Outcome, path: Path) -> Path:
    """Queue depth and replicas over time, with the moments the drill measures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    ts = [s.t - outcome.load_started_s for s in outcome.samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top.plot(
        ts,
        [s.messages or 0 for s in outcome.samples],
        label="messages (ready + unacked): KEDA's metric",
        color="tab:blue",
    )
    top.plot(ts, [s.ready or 0 for s in outcome.samples], label="ready", color="tab:cyan", linestyle="--")
    top.plot(
        ts,
        [s.unacked or 0 for s in outcome.samples],
        label="unacknowledged (running)",
        color="tab:purple",
        linestyle=":",
    )
    top.set_ylabel("messages")
    top.legend(loc="upper right", fontsize=8, framealpha=0.9)
    bottom.step(
        ts,
        [s.running for s in outcome.samples],
        where="post",
        label="replicas (KEDA / HPA)",
        color="tab:green",
    )
    bottom.step(
        ts,
        [s.ready_workers for s in outcome.samples],
        where="post",
        label="ready workers",
        color="tab:olive",
        linestyle="--",
    )
    bottom.step(
        ts,
        [s.draining for s in outcome.samples],
        where="post",
        label="terminating (draining)",
        color="tab:red",
        linestyle=":",
    )
    bottom.axhline(outcome.max, color="grey", linewidth=0.8, linestyle="-.")
    bottom.set_ylim(-0.2, outcome.max + 1.2)
    bottom.set_ylabel("replicas")
    bottom.set_xlabel("seconds since the load started")
    bottom.legend(loc="center right", fontsize=8, framealpha=0.9)
    marks = [("max reached", outcome.time_to_max_s), ("drained", outcome.drain_s)]
    if outcome.back_to_min_s is not None and outcome.drain_s is not None:
        marks.append(("back to min", outcome.drain_s + outcome.back_to_min_s))
    for label, at in marks:
        if at is not None:
            for ax in (top, bottom):
                ax.axvline(at, color="black", linewidth=0.6, linestyle="--")
            bottom.annotate(f" {label}", (at, outcome.max + 0.5), fontsize=8, ha="left")
    fig.suptitle(
        f"{outcome.name}: {outcome.jobs} jobs, min {outcome.min} max {outcome.max}, "
        f"polling {outcome.polling_interval:g}s, cooldown {outcome.cooldown_period:g}s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_json(outcome: Outcome, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(outcome.to_json(), indent=1, default=str))
    return path
