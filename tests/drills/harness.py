"""The drill harness: a real broker node, two `cpw api` and several `cpw worker` processes, a
bounded HTTP load generator, fault injectors, and the account of every accepted job.

The account is taken the way a client sees the system: a job is accepted when a client got a
2xx with its id; it is terminal when an API answers it Succeeded/Failed/Canceled; it is lost when
it is still not terminal after the settle time; a duplicate is a job for which clients saw two
different terminal outcomes (a later poll, or the other API replica, disagreeing with the first).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from tests.api.support import A, Proc, _env, spawn, start_worker, wait_ready, write_tokens
from tests.conftest import BrokerEndpoint
from tests.drills.forensics import explain
from tests.support.rabbitmq import RabbitMQServer, free_port

NS, TYPE = "Test.Scripted", "things"
TERMINAL = {"Succeeded", "Failed", "Canceled"}
# What each provider script must end as (the timeout and raising paths end Failed via the DLQ).
EXPECTED = {
    "ok": "Succeeded",
    "sleep": "Succeeded",
    "fail": "Succeeded",
    "hang": "Failed",
    "error": "Failed",
    "permanent": "Failed",
}

WORKER_SETTINGS: dict[str, Any] = {
    "CPW_MAX_CONCURRENT_JOBS": 40,
    "CPW_MAX_ATTEMPTS": 3,
    "CPW_JOB_TIMEOUT": 2,
    "CPW_RETRY_BASE_DELAY": 0.05,
    "CPW_RETRY_MAX_DELAY": 0.5,
    "CPW_RETRY_JITTER": 0,
    "CPW_DRAIN_TIMEOUT": 3,
    "CPW_HEARTBEAT_INTERVAL": 0.5,
    "CPW_RUNNING_EVENT_DELAY": 0.05,
    "CPW_LOG_LEVEL": "WARNING",
    "CPW_LOG_FORMAT": "json",  # lines carry job_id: forensics.py finds a lost job's lines by it
}


def expected_state(script: str) -> str:
    return EXPECTED[script.partition(":")[0]]


# -- the cluster -------------------------------------------------------------------------------


@dataclass
class Cluster:
    """Processes of one drill, on one vhost of the drill module's own broker node."""

    server: RabbitMQServer
    tmp: Path
    url: str = ""
    apis: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    worker_settings: dict[str, Any] = field(default_factory=dict)
    # worker ops port -> the highest /status counters seen (a killed worker keeps its last sample)
    samples: dict[int, dict[str, int]] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)
    endpoint: BrokerEndpoint | None = None
    vhost: str = ""
    api_settings: dict[str, Any] = field(default_factory=dict)  # e.g. the PostgreSQL store's

    async def start(self, apis: int = 2, workers: int = 3, **worker_settings: Any) -> Cluster:
        self.endpoint = BrokerEndpoint(self.server.amqp_url, self.server.management_url, self.server)
        self.vhost = self.endpoint.new_vhost()
        self.url = self.endpoint.url_for(self.vhost)
        self.worker_settings = {**WORKER_SETTINGS, **worker_settings}
        self.tokens = write_tokens(self.tmp)
        self.apis = list(await asyncio.gather(*(self._spawn_api(free_port(), free_port()) for _ in range(apis))))
        self.workers = list(await asyncio.gather(*(self.add_worker(track=False) for _ in range(workers))))
        return self

    async def _spawn_api(self, port: int, ops_port: int) -> Proc:
        extra = {"CPW_API_PORT": port, "CPW_HEALTH_PORT": ops_port, "CPW_API_TOKENS_FILE": self.tokens}
        env = _env(self.url, {**extra, **self.api_settings})
        log = self.tmp / f"api-{port}.log"
        proc = Proc(spawn(["api"], env, log), log, port, ops_port, env)
        await wait_ready(proc, f"{proc.ops_url}/health/ready", timeout=60)
        return proc

    @property
    def api_urls(self) -> list[str]:
        return [a.url for a in self.apis]

    def note(self, what: str) -> None:
        self.events.append((time.time(), what))

    async def add_worker(self, track: bool = True) -> Proc:
        # A replacement started during a full node restart waits for the node, as a pod would: the
        # node takes tens of seconds to stop and start again on a loaded 2-vCPU machine.
        proc = await start_worker(self.url, self.tmp, ready_timeout=120, **self.worker_settings)
        if track:
            self.workers.append(proc)
            self.note(f"worker started :{proc.ops_port}")
        return proc

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.proc.poll() is None]

    async def kill_worker(self, rng: random.Random) -> Proc | None:
        live = self.live_workers()
        if not live:
            return None
        victim = rng.choice(live)
        await self.sample(victim)
        victim.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.proc.wait, 10)
        self.note(f"kill -9 worker :{victim.ops_port}")
        return victim

    async def sigterm_worker(self, victim: Proc) -> int:
        await self.sample(victim)
        victim.proc.send_signal(signal.SIGTERM)
        self.note(f"SIGTERM worker :{victim.ops_port}")
        code = await asyncio.to_thread(victim.proc.wait, 60)
        return code

    async def kill_api(self, index: int) -> None:
        api = self.apis[index]
        api.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(api.proc.wait, 10)
        self.note(f"kill -9 api :{api.port}")

    async def restart_api(self, index: int) -> float:
        """Start the API again on the same ports (clients retry the same URL); seconds until ready."""
        old = self.apis[index]
        started = time.monotonic()
        self.apis[index] = await self._spawn_api(old.port, old.ops_port)
        self.note(f"api restarted :{old.port}")
        return time.monotonic() - started

    async def sample(self, worker: Proc | None = None) -> None:
        targets = [worker] if worker else self.live_workers()
        async with httpx.AsyncClient(timeout=2.0) as http:
            for w in targets:
                try:
                    status = (await http.get(f"{w.ops_url}/status")).json()
                except (httpx.HTTPError, ValueError):
                    continue
                seen = self.samples.setdefault(w.ops_port, {})
                for key in ("redelivered", "ack_lost", "jobs_processed", "jobs_retried", "jobs_dead_lettered"):
                    seen[key] = max(seen.get(key, 0), int(status.get(key, 0)))

    async def sampler(self, stop: asyncio.Event, every: float = 1.0) -> None:
        while not stop.is_set():
            await self.sample()
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass

    def counter(self, key: str) -> int:
        return sum(s.get(key, 0) for s in self.samples.values())

    async def api_status(self) -> list[dict]:
        out = []
        async with httpx.AsyncClient(timeout=5.0) as http:
            for api in self.apis:
                try:
                    out.append((await http.get(f"{api.ops_url}/status")).json())
                except (httpx.HTTPError, ValueError):
                    out.append({})
        return out

    def stop(self) -> None:
        for proc in [*self.workers, *self.apis]:
            proc.stop(timeout=10)
        if self.endpoint is not None and self.vhost:
            self.endpoint.delete_vhost(self.vhost)

    def tail(self) -> str:
        parts = []
        for proc in [*self.apis, *self.workers]:
            text = proc.output().strip().splitlines()[-15:]
            if text:
                parts.append(f"--- {proc.log.name}\n" + "\n".join(text))
        return "\n".join(parts)[-8000:]


# -- the load generator ------------------------------------------------------------------------


@dataclass
class JobRecord:
    n: int
    key: str
    script: str
    job_id: str | None = None
    ids: list[str] = field(default_factory=list)  # every id an answer carried (a retry may make a new job)
    accepted_at: float | None = None
    attempts: int = 0
    replayed: bool = False
    views: list[tuple[str, tuple]] = field(default_factory=list)  # (where, terminal outcome)
    final: dict | None = None
    gave_up: str | None = None


def outcome(view: dict) -> tuple:
    error = view.get("error") or {}
    return (view.get("status"), view.get("finishedAt"), view.get("workerId"), error.get("code"))


class Load:
    """Submit `count` jobs at `rate`/s for at most `duration` s over HTTP, then watch each one.

    Bounded: at most `count` jobs, nothing submitted after `duration`, at most `max_outstanding`
    jobs being submitted or watched at once (the generator lags rather than piles up), loopback
    URLs only. Submissions retry with their Idempotency-Key, on the other API when one fails.

    The client is aiohttp, not httpx: httpcore's pool rescans every connection for every queued
    request on each event, and with ~1,000 requests in flight that was 96% of this process's CPU
    (py-spy), so the full-size drills offered 16-21 jobs/s instead of 60.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        rate: float,
        count: int,
        duration: float,
        script: Callable[[int], str] = lambda n: "ok",
        max_outstanding: int = 1500,
        submit_deadline: float = 90.0,
    ) -> None:
        for url in cluster.api_urls:
            assert url.startswith("http://127.0.0.1:"), url
        self.cluster = cluster
        self.rate, self.count, self.duration = rate, count, duration
        self.script = script
        self.run_id = uuid.uuid4().hex[:8]
        self.records: list[JobRecord] = []
        self.slots = asyncio.Semaphore(max_outstanding)
        self.submit_deadline = submit_deadline
        self.started = 0.0
        self.started_epoch = time.time()
        self.submitted_in = 0.0
        self.last_new_at = 0.0  # epoch of the last new job the generator started
        self.recoveries: list[tuple[str, float]] = []
        self.submit_errors: Counter[str] = Counter()
        self.http: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task] = set()
        self._api = itertools.count()

    def stop(self) -> None:
        """Submit nothing more from now on (a load that lasts as long as a fault does)."""
        self.duration = min(self.duration, time.monotonic() - self.started)

    def url(self, shift: int = 0) -> str:
        urls = self.cluster.api_urls
        return urls[(next(self._api) + shift) % len(urls)]

    async def request(self, method: str, url: str, **kwargs: Any) -> tuple[int, Mapping[str, str], str] | None:
        """(status, headers, body), or None when the API is not there (killed, restarting, too slow)."""
        if self.http is None:
            self.http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=15.0, sock_connect=2.0),
                connector=aiohttp.TCPConnector(limit=400, limit_per_host=0),
            )
        try:
            async with self.http.request(method, url, headers=A | kwargs.pop("headers", {}), **kwargs) as response:
                # a CIMultiDict: header names stay case-insensitive (a dict kept aiohttp's spelling)
                return response.status, response.headers.copy(), await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def run(self) -> None:
        """Pace submissions; return once every job is accepted (or given up) and watched to an end."""
        self.started = time.monotonic()
        self.started_epoch = time.time()
        for n in range(self.count):
            due = self.started + n / self.rate
            if due - self.started > self.duration:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the pacing of the load itself, not a synchronisation
            await self.slots.acquire()
            record = JobRecord(n, f"drill-{self.run_id}-{n}", self.script(n))
            self.records.append(record)
            self.last_new_at = time.time()
            task = asyncio.create_task(self._job(record))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        self.submitted_in = time.monotonic() - self.started

    async def wait(self, timeout: float) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)
        for task in list(self.tasks):
            task.cancel()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.http is not None:
            await self.http.close()

    async def _job(self, record: JobRecord) -> None:
        try:
            if await self._submit(record):
                await self._watch(record)
        finally:
            self.slots.release()

    async def _submit(self, record: JobRecord) -> bool:
        body = {
            "namespace": NS,
            "type": TYPE,
            "operation": "create",
            "request": {"resource_name": f"r{record.n}", "body": {"script": record.script}},
        }
        headers = {"Idempotency-Key": record.key}
        deadline = time.monotonic() + self.submit_deadline
        shift = 0
        while time.monotonic() < deadline:
            record.attempts += 1
            url = self.url(shift)
            answer = await self.request("POST", f"{url}/jobs", json=body, headers=headers)
            if answer is None:  # the API died under us, or is not listening yet
                self.submit_errors["no answer"] += 1
                shift += 1
                await asyncio.sleep(0.2)
                continue
            status, response_headers, text = answer
            if status in (200, 202):
                data = json.loads(text)
                record.job_id = data["id"]
                record.ids.append(data["id"])
                record.accepted_at = time.time()
                record.replayed = response_headers.get("idempotent-replayed") == "true"
                return True
            self.submit_errors[str(status)] += 1
            if status in (429, 503):
                shift += 1
                await asyncio.sleep(0.25)
                continue
            record.gave_up = f"{status} {text[:200]}"
            return False
        record.gave_up = "submit deadline"
        return False

    async def _watch(self, record: JobRecord) -> None:
        """Long-poll the job on the APIs by turns until terminal, then read it from the other one."""
        assert record.job_id is not None
        shift = 0
        while True:
            url = self.url(shift)
            answer = await self.request("GET", f"{url}/operationResults/{record.job_id}", params={"wait": "10"})
            if answer is None:
                shift += 1
                await asyncio.sleep(0.2)
                continue
            status, _, text = answer
            if status in (202, 503) or (status == 404 and "NotFound" in text):
                if status != 202:
                    await asyncio.sleep(0.2)  # a restarted API still rebuilding, or the record not yet read
                shift += 1
                continue
            break  # a final answer: the job ended
        for where in (url, self.url(shift + 1)):
            view = await self._view(where, record.job_id)
            if view is not None and view.get("status") in TERMINAL:
                record.views.append((where, outcome(view)))

    async def _view(self, url: str, job_id: str) -> dict | None:
        for _ in range(20):
            answer = await self.request("GET", f"{url}/jobs/{job_id}")
            if answer is None:
                return None
            if answer[0] == 200:
                return json.loads(answer[2])
            await asyncio.sleep(0.1)
        return None


# -- the account -------------------------------------------------------------------------------


@dataclass
class Account:
    name: str
    accepted: int = 0
    terminal: int = 0
    by_state: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicates: int = 0
    wrong_outcome: int = 0
    redelivered: int = 0
    ack_lost: int = 0
    orphans: int = 0
    orphans_open: int = 0
    ignored_events: int = 0
    not_accepted: int = 0
    submit_errors: Counter[str] = field(default_factory=Counter)
    recoveries: list[tuple[str, float, float]] = field(default_factory=list)  # (fault, accept_s, finish_s)
    duration_s: float = 0.0
    rate: float = 0.0
    notes: list[str] = field(default_factory=list)
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)

    @property
    def max_recovery_s(self) -> float:
        return max((x for _, a, f in self.recoveries for x in (a, f) if not math.isnan(x)), default=0.0)

    def line(self) -> str:
        states = " ".join(f"{k}={v}" for k, v in sorted(self.by_state.items()))
        rec = ",".join(f"{what}:{_s(a)}/{_s(f)}" for what, a, f in self.recoveries)
        return (
            f"{self.name}: accepted={self.accepted} terminal={self.terminal} ({states}) lost={self.lost} "
            f"duplicates={self.duplicates} wrong_outcome={self.wrong_outcome} redelivered={self.redelivered} "
            f"ack_lost={self.ack_lost} orphans={self.orphans} ignored_dup_events={self.ignored_events} "
            f"not_accepted={self.not_accepted} max_recovery_s={self.max_recovery_s:.1f}"
            + (f" recoveries(accept/finish s)={rec}" if rec else "")
            + f" load={self.rate:.0f}/s for {self.duration_s:.0f}s"
        )


async def list_all(http: httpx.AsyncClient, url: str) -> dict[str, dict] | None:
    """Every job one API replica holds for tenant A, through the paged list."""
    jobs: dict[str, dict] = {}
    next_url: str | None = f"{url}/jobs?top=1000"
    while next_url:
        try:
            response = await http.get(next_url, headers=A)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        page = response.json()
        for job in page["value"]:
            jobs[job["id"]] = job
        next_url = page.get("nextLink")
    return jobs


async def settle(cluster: Cluster, load: Load, name: str, settle_s: float) -> Account:
    """Wait (by polling both replicas' lists) until every accepted job is terminal, or settle_s passes."""
    accepted = {r.job_id: r for r in load.records if r.job_id}
    deadline = time.monotonic() + settle_s
    views: list[dict[str, dict]] = []
    async with httpx.AsyncClient(timeout=30.0) as http:
        while True:
            views = []
            for url in cluster.api_urls:
                listed = await list_all(http, url)
                views.append(listed or {})
            open_ids = [j for j in accepted if any(v.get(j, {}).get("status") not in TERMINAL for v in views)]
            orphans_open = [
                j for v in views for j, job in v.items() if j not in accepted and job["status"] not in TERMINAL
            ]
            if (not open_ids and not orphans_open) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    await cluster.sample()
    account = Account(name)
    account.accepted = len(accepted)
    account.not_accepted = sum(1 for r in load.records if r.job_id is None)
    account.submit_errors = load.submit_errors
    account.duration_s = load.submitted_in
    account.rate = len(load.records) / max(load.submitted_in, 0.001)
    for job_id, record in accepted.items():
        finals = [v.get(job_id) for v in views]
        seen = [o for _, o in record.views] + [outcome(f) for f in finals if f and f.get("status") in TERMINAL]
        if all(f is not None and f["status"] in TERMINAL for f in finals):
            account.terminal += 1
            account.by_state[finals[0]["status"]] += 1
            record.final = finals[0]
            if finals[0]["status"] != expected_state(record.script):
                account.wrong_outcome += 1
        else:
            account.lost += 1
            account.lost_ids.append(job_id)
        if len(set(seen)) > 1:
            account.duplicates += 1
            account.duplicate_ids.append(f"{job_id}: {sorted(set(seen), key=str)}")
    all_ids = set().union(*(v.keys() for v in views)) if views else set()
    orphans = all_ids - set(accepted)
    account.orphans = len(orphans)
    account.orphans_open = sum(1 for j in orphans if any(v.get(j, {}).get("status") not in TERMINAL for v in views))
    statuses = await cluster.api_status()
    account.ignored_events = max((s.get("index", {}).get("duplicates", 0) for s in statuses), default=0)
    account.redelivered = cluster.counter("redelivered")
    account.ack_lost = cluster.counter("ack_lost")
    return account


def _s(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds:.1f}"


def recovery(load: Load, back_at: float, what: str) -> tuple[str, float, float]:
    """Seconds from `back_at` (epoch) to the first job accepted after it and the first job finished after it."""
    accepted = [r.accepted_at for r in load.records if r.accepted_at and r.accepted_at >= back_at]
    finished = []
    for r in load.records:
        if r.final and r.final.get("finishedAt"):
            finished.append(_epoch(r.final["finishedAt"]))
    finished = [f for f in finished if f >= back_at]
    # Nothing left to accept (the load had ended and every job was in) is not a failure to recover:
    # n/a, and the drill's max leaves it out. A job still waiting to be accepted stays `inf`.
    waiting = load.last_new_at >= back_at or any(r.job_id is None and not r.gave_up for r in load.records)
    first_accept = min(accepted) - back_at if accepted else (float("inf") if waiting else math.nan)
    unfinished = any(r.final is None for r in load.records if r.job_id)
    first_finish = min(finished) - back_at if finished else (float("inf") if unfinished else math.nan)
    return (what, first_accept, first_finish)


def _epoch(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


# -- one drill ---------------------------------------------------------------------------------

RESULTS: list[Account] = []  # every drill's account, printed by conftest.py at the end of the run


async def drill(
    name: str,
    cluster: Cluster,
    load: Load,
    faults: Callable[[Load], Any] | None = None,
    *,
    settle_s: float = 60.0,
) -> Account:
    """Run the load with the faults alongside, settle, take the account, and check it balances."""
    stop = asyncio.Event()
    sampler = asyncio.create_task(cluster.sampler(stop))
    recoveries: list[tuple[str, float]] = []
    load.recoveries = recoveries  # faults append (what, epoch when the broker was back)
    try:
        fault_task = asyncio.create_task(faults(load)) if faults else None
        await load.run()
        if fault_task is not None:
            await fault_task
        await load.wait(timeout=settle_s)
        account = await settle(cluster, load, name, settle_s=settle_s / 2)
        account.recoveries = [recovery(load, back_at, what) for what, back_at in recoveries]
    finally:
        stop.set()
        await sampler
        await load.close()
    RESULTS.append(account)
    print(account.line())
    for when, what in cluster.events:
        print(f"  {when - load.started_epoch:6.1f}s {what}")
    problems = []
    if account.lost:
        problems.append(f"lost {account.lost}: {account.lost_ids[:10]}")
        print(await explain(cluster, load, account.lost_ids[:10]))
    if account.duplicates:
        problems.append(f"duplicates {account.duplicates}: {account.duplicate_ids[:5]}")
    if account.orphans_open:
        problems.append(f"{account.orphans_open} jobs no client holds are not terminal")
    if account.accepted == 0:
        problems.append("nothing accepted")
    assert not problems, "; ".join(problems) + "\n" + account.line() + "\n" + cluster.tail()
    return account


async def every(period: float, until: float, action: Callable[[int], Any], start: float | None = None) -> None:
    """Run `action(i)` every `period` s (the drill's own pacing) until `until` s after the call."""
    began = time.monotonic()
    i = 0
    next_at = began + (period if start is None else start)
    while next_at - began < until:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await action(i)
        i += 1
        next_at += period
