"""WorkerRole is the seed's abstract base class: a team's own role runs with `cpw worker --role`, the same ops
port, probes and drain; and `cpw worker` whose ops port is taken exits 2 before it consumes anything."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from controlplane_workers import Job, JobQueue, ProviderWorker, WorkerRole, load_settings
from tests.api.support import ROOT, Proc, _env, wait_ready
from tests.chart.chartlib import env_of, one, render_values
from tests.support import providers
from tests.support.rabbitmq import free_port
from tests.support.roles import Ticker

pytestmark = pytest.mark.timeout(60)


def test_worker_role_is_an_abstract_base_class():
    with pytest.raises(TypeError):
        WorkerRole(load_settings(rabbitmq_url="memory://"))  # type: ignore[abstract]

    class Half(WorkerRole):
        async def start(self) -> None: ...

    with pytest.raises(TypeError):
        Half(load_settings(rabbitmq_url="memory://"))  # type: ignore[abstract]
    assert issubclass(ProviderWorker, WorkerRole) and issubclass(Ticker, WorkerRole)


async def test_the_provider_worker_processes_a_job_in_process():
    worker = ProviderWorker(load_settings(rabbitmq_url="memory://"), providers.registry)
    job = Job.model_validate(
        {"provider_namespace": "Test.Scripted", "resource_type": "things", "operation": "create",
         "request": {"resource_name": "vm1", "body": {"a": 1}}, "tenant": "t1"}
    )  # fmt: skip
    result = await worker.process_job(job)
    assert result["name"] == "vm1" and result["body"] == {"a": 1}


def spawn_worker(args: list[str], env: dict[str, str], log) -> subprocess.Popen:  # noqa: ANN001
    return subprocess.Popen(
        [sys.executable, "-m", "controlplane_workers.cli", "worker", *args],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.PIPE,
    )


async def test_a_role_of_its_own_runs_with_the_ops_port_and_drains_on_sigterm(tmp_path):
    ops_port = free_port()
    env = _env("memory://", {"CPW_HEALTH_PORT": ops_port})
    log = tmp_path / "role.log"
    proc = Proc(spawn_worker(["--role", "tests.support.roles:Ticker"], env, log), log, 0, ops_port)
    try:
        await wait_ready(proc, f"{proc.ops_url}/health/ready")
        async with httpx.AsyncClient(timeout=5) as http:
            status = (await http.get(f"{proc.ops_url}/status")).json()
            health = (await http.get(f"{proc.ops_url}/health")).json()
        assert status["role"] == "Ticker" and status["ticks"] >= 1
        assert health["status"] == "healthy"
        proc.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.proc.wait, 20) == 0
    finally:
        proc.stop()


@pytest.mark.parametrize("role", ["nope", "tests.support.roles:Nope", "tests.support.providers:registry"])
def test_a_role_that_cannot_be_loaded_exits_2_with_one_line(tmp_path, role):
    env = _env("memory://", {"CPW_HEALTH_PORT": free_port()})
    result = subprocess.run(
        [sys.executable, "-m", "controlplane_workers.cli", "worker", "--role", role],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "CPW_WORKER_ROLE" in result.stderr


@pytest.mark.rabbitmq
async def test_a_taken_ops_port_exits_2_before_consuming_a_job(rabbitmq, tmp_path):
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        async with JobQueue(url) as queue:
            await queue.submit_job("Test.Scripted", "things", "create", {"resource_name": "waits"})
            env = _env(
                url, {"CPW_HEALTH_PORT": taken.getsockname()[1], "CPW_PROVIDERS": "tests.support.providers:registry"}
            )
            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "controlplane_workers.cli", "worker"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip().count("\n") == 0 and "CPW_HEALTH_PORT" in result.stderr
            stats = await queue.get_queue_stats()
            assert stats.ready == 1 and stats.unacked == 0  # the job was never taken
    finally:
        taken.close()
        rabbitmq.delete_vhost(vhost)


def test_the_chart_passes_the_role_to_the_worker():
    default = one(render_values({}), "Deployment", "cpw-worker")
    assert "CPW_WORKER_ROLE" not in env_of(default["spec"]["template"]["spec"]["containers"][0])
    custom = one(render_values({"workers": {"role": "my_team.roles:Reconciler"}}), "Deployment", "cpw-worker")
    assert env_of(custom["spec"]["template"]["spec"]["containers"][0])["CPW_WORKER_ROLE"] == "my_team.roles:Reconciler"
