"""The five systems of the peer benchmark behind one interface, and the load generators.

Every system runs the same workload on the same RabbitMQ (a fresh vhost per run): a ~300-byte
ARM-style request, a no-op returning a ~200-byte resource, completion observed by the submitter,
one worker OS process with up to 32 jobs in flight (prefetch / concurrency 32).

- `closed(n, window)`: submit n jobs with at most `window` submissions in flight, then wait for
  every completion. Completed jobs/s = n / (last completion - start); the submit phase is timed too.
- `open_loop(rate, seconds)`: a fixed-rate (open-loop) generator: job i is due at t0 + i/rate and is
  launched then whatever happened to earlier jobs; latency = completion - due time, so a generator
  or system that falls behind is charged for it (no coordinated omission).
- `submit_only(n, window)`: submissions, confirmed, with no worker consuming.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from tests.bench.httpclient import HttpPool
from tests.bench.noop import arm_request
from tests.support.proc import cpu_seconds, peak_rss_bytes
from tests.support.processes import ROOT, CpwProcess
from tests.support.rabbitmq import free_port

CONCURRENCY = 32
WINDOW = 512  # submissions in flight at once (the core benchmark's value)
BIN = Path(sys.executable).parent
PYTHONPATH = os.pathsep.join(str(p) for p in (ROOT, ROOT / "worker", ROOT / "api-adapter"))

SYSTEMS = {
    "project": "controlplane-workers, SDK (JobQueue -> cpw worker)",
    "http": "controlplane-workers, HTTP (cpw api -> cpw worker)",
    "raw": "raw aio-pika (the floor)",
    "celery": "Celery 5 (threads pool 32, rpc:// results)",
    "taskiq": "Taskiq + taskiq-aio-pika",
}


@dataclass
class Closed:
    jobs: int
    seconds: float  # start -> last completion observed
    submit_seconds: float  # start -> last submission confirmed

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


@dataclass
class Open:
    rate: float
    jobs: int
    seconds: float  # first due -> last due, i.e. the offered schedule
    latencies: list[float] = field(default_factory=list)  # seconds, completed jobs only, sorted
    span: float = 0.0  # first due -> last completion

    @property
    def completed_per_s(self) -> float:
        """Completions per second over the run; below the offered rate = the system fell behind."""
        return self.jobs / self.span if self.span > 0 else float("nan")

    def percentile(self, p: float) -> float:
        values = self.latencies
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(round(p / 100 * len(values) + 0.5)) - 1)]


class System:
    """One system: start its worker processes and a submitter, run load, stop."""

    key = ""
    jobs_queue = ""  # the queue its worker consumes (readiness: a consumer on it)

    def __init__(self, endpoint: Any, vhost: str, tmp: Path) -> None:
        self.endpoint, self.vhost, self.tmp = endpoint, vhost, tmp
        self.url = endpoint.url_for(vhost)
        self.processes: list[subprocess.Popen] = []
        self.counter = 0

    # -- lifecycle
    async def start(self, workers: int = 1) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: broker node, worker processes, this (submitting) process, API."""
        server = getattr(self.endpoint, "server", None)
        out = {
            "broker": cpu_seconds(server.process.pid) if server is not None and server.process else 0.0,
            "worker": sum(cpu_seconds(pid) for pid in self.worker_pids()),
            "client": cpu_seconds(os.getpid(), tree=False),
        }
        api = getattr(self, "api", None)
        if api is not None and api.process is not None:
            out["api"] = cpu_seconds(api.process.pid)
        return out

    def peak_rss_mb(self) -> float:
        """Peak RSS of the (first) worker process and its children, in MB."""
        pids = self.worker_pids()
        return peak_rss_bytes(pids[0]) / 1e6 if pids else float("nan")

    def spawn(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{self.key}-{name}-{len(self.processes)}.log", "ab")
        process = subprocess.Popen(
            argv,
            env={**os.environ, "PYTHONPATH": PYTHONPATH, **env},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    async def wait_consumers(self, count: int, limit: float = 60.0) -> None:
        """Ready = the worker consumes its queue (a passive declare tells at once; the management
        API's counts lag by its 5 s statistics interval)."""
        deadline = time.monotonic() + limit
        connection = await aio_pika.connect(self.url)
        try:
            while True:
                for process in self.processes:
                    if process.poll() is not None:
                        raise RuntimeError(f"{self.key} worker exited {process.returncode}; see {self.tmp}")
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(self.jobs_queue, passive=True)
                    if (queue.declaration_result.consumer_count or 0) >= count:
                        return
                except aio_pika.exceptions.ChannelClosed:
                    pass  # not declared yet
                finally:
                    if not channel.is_closed:
                        await channel.close()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.key}: no consumer on {self.jobs_queue} after {limit}s")
                await asyncio.sleep(0.05)
        finally:
            await connection.close()

    # -- one job
    def next_index(self) -> int:
        self.counter += 1
        return self.counter

    async def submit(self, i: int) -> Any:
        """Publish job i; returns a handle once the broker (or API) confirmed it."""
        raise NotImplementedError

    async def done(self, handle: Any) -> None:
        """Returns once the submitter has observed the job's successful completion."""
        raise NotImplementedError

    async def job(self, i: int, submitted: Callable[[], None]) -> None:
        handle = await self.submit(i)
        submitted()
        await self.done(handle)

    # -- load
    async def closed(self, n: int, window: int = WINDOW, limit: float = 600.0) -> Closed:
        semaphore = asyncio.Semaphore(window)
        last_submit = last_done = 0.0
        completed = 0
        start = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal last_submit, last_done, completed
            await semaphore.acquire()
            released = False

            def submitted() -> None:
                nonlocal released, last_submit
                last_submit = max(last_submit, time.perf_counter())
                released = True
                semaphore.release()

            try:
                await self.job(i, submitted)
            finally:
                if not released:
                    semaphore.release()
            completed += 1
            last_done = max(last_done, time.perf_counter())

        await asyncio.wait_for(asyncio.gather(*(one(self.next_index()) for _ in range(n))), limit)
        assert completed == n, f"{self.key}: {completed} of {n} jobs completed"
        return Closed(n, last_done - start, (last_submit or last_done) - start)

    async def open_loop(self, rate: float, seconds: float, limit: float = 600.0) -> Open:
        n = max(1, int(rate * seconds))
        latencies: list[float] = []
        tasks = []
        loop_start = time.perf_counter() + 0.01

        last = loop_start

        async def one(i: int, due: float) -> None:
            nonlocal last
            await self.job(i, _nothing)
            now = time.perf_counter()
            latencies.append(now - due)
            last = max(last, now)

        for k in range(n):
            due = loop_start + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(self.next_index(), due)))
        await asyncio.wait_for(asyncio.gather(*tasks), limit)
        assert len(latencies) == n, f"{self.key}: {len(latencies)} of {n} jobs completed"
        return Open(rate, n, (n - 1) / rate, sorted(latencies), last - loop_start)

    async def submit_only(self, n: int, window: int = WINDOW) -> float:
        """Seconds to have n submissions confirmed (no worker consuming)."""
        semaphore = asyncio.Semaphore(window)

        async def one(i: int) -> None:
            async with semaphore:
                await self.submit(i)

        start = time.perf_counter()
        await asyncio.gather(*(one(self.next_index()) for _ in range(n)))
        return time.perf_counter() - start


def _nothing() -> None:
    pass


def cpw_worker_env(url: str) -> dict[str, str]:
    return {
        "CPW_RABBITMQ_URL": url,
        "CPW_PROVIDERS": "tests.bench.noop:registry",
        "CPW_MAX_CONCURRENT_JOBS": str(CONCURRENCY),
        "CPW_LOG_LEVEL": "WARNING",
    }


class _CpwWorkers(System):
    """Shared by the two paths of this project: `cpw worker` processes."""

    workers: list[CpwProcess]

    async def start_workers(self, count: int) -> None:
        self.workers = [
            CpwProcess("worker", cpw_worker_env(self.url), self.tmp / f"{self.key}-worker-{i}.log").start()
            for i in range(count)
        ]
        for worker in self.workers:
            await asyncio.to_thread(worker.wait_ready, 60)

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process is not None]

    async def stop(self) -> None:
        for worker in getattr(self, "workers", []):
            worker.stop()
        await super().stop()


class ProjectSDK(_CpwWorkers):
    key = "project"

    async def start(self, workers: int = 1) -> None:
        from controlplane_workers import JobQueue

        await self.start_workers(workers)
        self.queue = JobQueue(self.url, replay_from="next", name="cpw-bench")
        await self.queue.connect()

    async def submit(self, i: int) -> str:
        return await self.queue.submit_job("Bench.Noop", "things", "create", arm_request(i))

    async def done(self, handle: str) -> None:
        result = await self.queue.get_job_result(handle, 600)
        assert result is not None and result.status.value == "Succeeded", result

    async def stop(self) -> None:
        if getattr(self, "queue", None) is not None:
            await self.queue.disconnect()
        await super().stop()


class ProjectHTTP(_CpwWorkers):
    """Load generator -> `cpw api` -> worker; completion observed with PUT ?wait= (then polling)."""

    key = "http"
    TOKEN = "bench-token"
    PREFIX = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/bench-rg/providers/Bench.Noop/things"

    async def start(self, workers: int = 1) -> None:
        tokens = self.tmp / "bench-tokens.json"
        tokens.write_text(json.dumps({self.TOKEN: "bench"}))
        self.port = free_port()
        env = {
            "CPW_RABBITMQ_URL": self.url,
            "CPW_API_PORT": str(self.port),
            "CPW_API_HOST": "127.0.0.1",
            "CPW_API_TOKENS_FILE": str(tokens),
            "CPW_API_TENANT_MAX_QUEUED": "10000000",
            "CPW_API_TENANT_RATE": "0",  # one tenant at full speed: the benchmark measures the API, not the limit
            "CPW_LOG_LEVEL": "WARNING",
        }
        self.api = CpwProcess("api", env, self.tmp / f"http-api-{self.port}.log").start()
        await asyncio.to_thread(self.api.wait_ready, 60)
        await self.start_workers(workers)
        self.http = HttpPool("127.0.0.1", self.port, max_connections=1000)
        self.headers = {"Authorization": f"Bearer {self.TOKEN}", "Content-Type": "application/json"}

    def _put(self, i: int, wait: bool) -> bytes:
        request = arm_request(i)
        target = f"{self.PREFIX}/{request['resource_name']}?api-version={request['api_version']}"
        if wait:
            target += "&wait=30"
        return self.http.build("PUT", target, self.headers, orjson.dumps(request["body"]))

    async def submit(self, i: int) -> str:
        status, body = await self.http.request(self._put(i, wait=False))
        assert status == 201, (status, body[:300])
        return orjson.loads(body)["jobId"]

    async def done(self, handle: str) -> None:
        target = f"/operationResults/{handle}?api-version=2024-01-01&wait=30"
        while True:
            status, body = await self.http.request(self.http.build("GET", target, self.headers))
            if status == 200:
                return
            assert status == 202, (status, body[:300])

    async def job(self, i: int, submitted: Callable[[], None]) -> None:
        # One request: the API answers once the job ended (200) or after 30 s with 201 + jobId.
        status, body = await self.http.request(self._put(i, wait=True))
        submitted()
        if status == 201:
            await self.done(orjson.loads(body)["jobId"])
        else:
            assert status == 200, (status, body[:300])

    def worker_pids(self) -> list[int]:
        return super().worker_pids()

    def api_peak_rss_mb(self) -> float:
        return peak_rss_bytes(self.api.process.pid) / 1e6 if self.api.process else float("nan")

    async def stop(self) -> None:
        if getattr(self, "http", None) is not None:
            self.http.close()
        if getattr(self, "api", None) is not None:
            self.api.stop()
        await super().stop()


class RawAioPika(System):
    """tests/bench/raw_worker.py: consume (prefetch 32), publish a result with confirms, ack."""

    key = "raw"
    jobs_queue = "raw.jobs"

    async def start(self, workers: int = 1) -> None:
        for _ in range(workers):
            process = subprocess.Popen(  # noqa: ASYNC220 - setup, not measured
                [sys.executable, str(Path(__file__).with_name("raw_worker.py")), self.url, str(CONCURRENCY)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            self.processes.append(process)
            assert process.stdout is not None
            assert (await asyncio.to_thread(process.stdout.readline)).strip() == "ready"
        self.connection = await aio_pika.connect_robust(self.url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.channel.declare_queue("raw.jobs", durable=True)
        consume = await self.connection.channel(publisher_confirms=False)
        await consume.set_qos(prefetch_count=2000)
        results = await consume.declare_queue("raw.results", durable=True)
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.early: set[str] = set()

        async def on_result(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            job_id = orjson.loads(message.body)["id"]
            waiter = self.waiters.pop(job_id, None)
            if waiter is None:
                self.early.add(job_id)
            elif not waiter.done():
                waiter.set_result(None)
            await message.ack()

        await results.consume(on_result)

    async def submit(self, i: int) -> str:
        job_id = str(i)
        job = {"id": job_id, "request": arm_request(i), "operation": "create"}
        await self.channel.default_exchange.publish(
            aio_pika.Message(orjson.dumps(job), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "raw.jobs"
        )
        return job_id

    async def done(self, handle: str) -> None:
        if handle in self.early:
            self.early.discard(handle)
            return
        waiter = self.waiters[handle] = asyncio.get_running_loop().create_future()
        await waiter

    async def stop(self) -> None:
        if getattr(self, "connection", None) is not None:
            await self.connection.close()
        await super().stop()


class Taskiq(System):
    key = "taskiq"
    jobs_queue = "taskiq"

    async def start(self, workers: int = 1) -> None:
        from tests.bench.taskiq_app import make_broker

        for _ in range(workers):
            self.spawn(
                [
                    str(BIN / "taskiq"),
                    "worker",
                    "tests.bench.taskiq_app:broker",
                    "--workers",
                    "1",
                    "--max-async-tasks",
                    str(CONCURRENCY),
                    "--max-prefetch",
                    "0",
                    "--ack-type",
                    "when_saved",
                    "--log-level",
                    "WARNING",
                ],
                {"CPW_BENCH_URL": self.url},
                "worker",
            )
        self.broker, self.backend, self.task = make_broker(self.url)
        await self.broker.startup()
        await self.backend.listen()
        if workers:
            await self.wait_consumers(workers)

    async def submit(self, i: int) -> str:
        return (await self.task.kiq(arm_request(i))).task_id

    async def done(self, handle: str) -> None:
        result = await self.backend.wait(handle)
        assert not result.is_err, result

    async def stop(self) -> None:
        if getattr(self, "broker", None) is not None:
            await self.broker.shutdown()
        await super().stop()


class Celery(System):
    """Celery's client is synchronous: submitters are threads, each with its own rpc:// backend
    (Celery keeps one per thread, with its own reply queue) that it drains between submissions."""

    key = "celery"
    jobs_queue = "celery"
    THREADS = 8

    async def start(self, workers: int = 1) -> None:
        from tests.bench.celery_app import make_app

        for _ in range(workers):
            self.spawn(
                [
                    str(BIN / "celery"),
                    "-A",
                    "tests.bench.celery_app",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(CONCURRENCY),
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                {"CPW_BENCH_URL": self.url},
                "worker",
            )
        self.app = make_app(self.url)
        self.noop = self.app.tasks["bench.noop"]
        self.executor = ThreadPoolExecutor(self.THREADS, thread_name_prefix="celery-submitter")
        if workers:
            await self.wait_consumers(workers)

    # one submitter thread: dues None = as fast as confirms allow
    def _thread(
        self, indices: list[int], dues: list[float] | None, wait: bool, limit: float
    ) -> list[tuple[float, float, float]]:
        backend = self.app.backend
        out: list[tuple[float, float, float]] = []
        submitted_at: dict[int, float] = {}

        def drain(seconds: float) -> None:
            try:
                backend.result_consumer.drain_events(timeout=seconds)
            except TimeoutError:  # socket.timeout: nothing arrived
                pass

        def callback_for(i: int, due: float) -> Callable[[Any], None]:
            def on_ready(result: Any) -> None:
                assert result.state == "SUCCESS", result.state
                out.append((due, submitted_at[i], time.perf_counter()))

            return on_ready

        for k, i in enumerate(indices):
            due = time.perf_counter() if dues is None else dues[k]
            while dues is not None and (left := due - time.perf_counter()) > 0:
                drain(min(left, 0.05))
            result = self.noop.apply_async((arm_request(i),))
            submitted_at[i] = time.perf_counter()
            if wait:
                result.then(callback_for(i, due))
                if dues is None and k % 16 == 15:
                    drain(0.0001)
        if not wait:
            return [(0.0, t, t) for t in submitted_at.values()]
        deadline = time.perf_counter() + limit
        while len(out) < len(indices):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"celery: {len(out)} of {len(indices)} results")
            drain(0.5)
        return out

    async def _threads(
        self, indices: list[int], dues: list[float] | None, wait: bool, limit: float
    ) -> list[tuple[float, float, float]]:
        loop = asyncio.get_running_loop()
        t = self.THREADS
        shares = [indices[k::t] for k in range(t)]
        due_shares = [dues[k::t] for k in range(t)] if dues is not None else [None] * t
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(self.executor, self._thread, share, due, wait, limit)
                for share, due in zip(shares, due_shares, strict=True)
                if share
            )
        )
        return [row for part in parts for row in part]

    async def closed(self, n: int, window: int = WINDOW, limit: float = 600.0) -> Closed:
        indices = [self.next_index() for _ in range(n)]
        start = time.perf_counter()
        rows = await self._threads(indices, None, True, limit)
        assert len(rows) == n, f"celery: {len(rows)} of {n} jobs completed"
        return Closed(n, max(r[2] for r in rows) - start, max(r[1] for r in rows) - start)

    async def open_loop(self, rate: float, seconds: float, limit: float = 600.0) -> Open:
        n = max(1, int(rate * seconds))
        indices = [self.next_index() for _ in range(n)]
        t0 = time.perf_counter() + 0.05
        dues = [t0 + k / rate for k in range(n)]
        rows = await self._threads(indices, dues, True, limit)
        assert len(rows) == n, f"celery: {len(rows)} of {n} jobs completed"
        return Open(
            rate, n, (n - 1) / rate, sorted(done - due for due, _, done in rows), max(done for _, _, done in rows) - t0
        )

    async def submit_only(self, n: int, window: int = WINDOW) -> float:
        indices = [self.next_index() for _ in range(n)]
        start = time.perf_counter()
        await self._threads(indices, None, False, 600)
        return time.perf_counter() - start

    async def stop(self) -> None:
        if getattr(self, "executor", None) is not None:
            self.executor.shutdown(wait=True)
        if getattr(self, "app", None) is not None:
            self.app.close()
        await super().stop()


CLASSES: dict[str, type[System]] = {
    "project": ProjectSDK,
    "http": ProjectHTTP,
    "raw": RawAioPika,
    "celery": Celery,
    "taskiq": Taskiq,
}


def available(key: str) -> str | None:
    """None when the system can run here, else why not."""
    module = {"celery": "celery", "taskiq": "taskiq_aio_pika"}.get(key)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed (pip install -e '.[bench]')"
    return None
