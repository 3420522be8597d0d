"""The chart's pods run as rendered (issue 18): every workload of a value set started from its manifest alone.

For each value set: render with the Helm engine, create the Secrets the chart expects to exist, start one
replica of each Deployment (runner.py: volumes, env, user, read-only root, probes), require the probes to pass
within their budgets and every Service's targetPort to hit a listening port, send a job through the API
Service to a worker (with the PostgreSQL store, its state written by the projector into the test's PostgreSQL),
run the helm test pod to exit 0, then preStop + SIGTERM each pod to exit 0 within its grace period (the worker
while a job runs: that job must still Succeed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.parse
from collections import Counter

import httpx
import pytest

from controlplane_workers.broker.base import Delivery
from controlplane_workers.broker.rabbitmq import RabbitMQBroker
from tests.pods import keda, kube, monitor
from tests.pods.cluster import Cluster
from tests.pods.conftest import HELM_TEST
from tests.pods.runner import PodRun, listening_ports
from tests.pods.secrets import SECRETS
from tests.support.topology import worker_topology

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(150)]

API_VERSION = "2024-01-01"
RESOURCE = "/subscriptions/sub1/resourceGroups/rg1/providers/Demo.Compute/virtualMachines/vm1"


def _wait(run: PodRun, what: str, event_name: str, budget: float) -> None:
    event = getattr(run.log, event_name)
    deadline = time.monotonic() + budget
    while not event.wait(0.2):
        assert run.process is not None
        assert run.process.poll() is None, f"{run.pod.name} exited {run.process.returncode}:\n{run.output()}"
        assert not run.log.killed.is_set(), f"{run.pod.name}: the kubelet would restart it: {run.log.failures[-3:]}"
        assert time.monotonic() < deadline, (
            f"{run.pod.name}: {what} not passed in {budget:.0f}s: {run.log.failures[-3:]}\n{run.output()[-1500:]}"
        )


def wait_up(run: PodRun) -> None:
    """Started (startup probe) within its budget, then ready and alive within theirs."""
    _wait(run, "startupProbe", "started", run.budget("startup"))
    _wait(run, "readinessProbe", "ready", run.budget("readiness"))
    _wait(run, "livenessProbe", "alive", run.budget("liveness"))


def ops_status(run: PodRun) -> dict:
    """GET /status on the pod's ops port, as a kubectl port-forward would."""
    port = kube.named_port(run.container, "ops")
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(run.socket(port))), timeout=5) as http:
        return http.get(f"http://{run.pod.pod_ip}:{port}/status").json()


def api_client(cluster: Cluster, token: str) -> httpx.Client:
    """A client whose connections land where the API Service's port 8000 sends them."""
    transport = httpx.HTTPTransport(uds=str(cluster.service_socket("cpw-api", 8000)))
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.Client(transport=transport, base_url="http://cpw-api:8000", headers=headers, timeout=10)


def wait_status(http: httpx.Client, job_id: str, until: tuple[str, ...], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = http.get(f"/operations/{job_id}", params={"api-version": API_VERSION}).json()["status"]
        if status in until or status in ("Succeeded", "Failed", "Canceled") or time.monotonic() > deadline:
            return status
        time.sleep(0.02)  # a client polling the operation, as an ARM client does


def put_vm(http: httpx.Client, name: str) -> str:
    created = http.put(
        f"{RESOURCE[: RESOURCE.rindex('/')]}/{name}?api-version={API_VERSION}",
        json={"location": "westeurope", "properties": {"vmSize": "Standard_D2s_v5"}},
    )
    assert created.status_code == 201, created.text
    return created.json()["jobId"]


def submit_job(cluster: Cluster, token: str) -> str:
    """PUT a resource through the API Service's port and poll the operation until it ends."""
    with api_client(cluster, token) as http:
        created = http.put(
            f"{RESOURCE}?api-version={API_VERSION}",
            json={"location": "westeurope", "properties": {"vmSize": "Standard_D2s_v5"}},
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["jobId"]
        deadline = time.monotonic() + 60
        while True:
            status = http.get(f"/operations/{job_id}", params={"api-version": API_VERSION}).json()
            if status["status"] in ("Succeeded", "Failed", "Canceled") or time.monotonic() > deadline:
                return status["status"]
            time.sleep(0.1)  # a client polling the operation, as an ARM client does


def scale_as_keda(cluster: Cluster, token: str, so: dict, target: PodRun) -> None:
    """KEDA's part: with the target still at zero pods, jobs are sent until the trigger, resolved and called as
    KEDA's scaler does, reads a backlog above its activation value; then the target starts with the replicas
    KEDA would set (one pod stands for them) and the waiting jobs must Succeed."""
    triggers = keda.rabbit_triggers(cluster, so, target)
    for trigger in triggers:
        keda.check_consumed_by(trigger, target)
    queue_triggers = [t for t in triggers if not t.regex]
    assert queue_triggers, "a ScaledObject without a rabbitmq trigger on the jobs queue: the worker would never scale"
    backlog = int(max(t.activation for t in queue_triggers)) + 1
    with api_client(cluster, token) as http:
        jobs = [put_vm(http, f"keda{i}") for i in range(backlog)]
        for trigger in queue_triggers:
            seen = trigger.wait_reading(cluster, backlog, float(so["spec"].get("pollingInterval", 30)) + 10)
            assert seen == backlog, f"KEDA reads {seen} messages in {trigger.queue}, {backlog} jobs wait"
            assert seen > trigger.activation, "the jobs do not activate the scaler"
        assert keda.replicas(so, keda.is_active(triggers, cluster)) >= 1
        target.start()
        wait_up(target)
        for job_id in jobs:
            assert wait_status(http, job_id, ()) == "Succeeded", f"job {job_id} did not Succeed once KEDA scaled up"


def test_keda_wakes_the_fleet_for_a_waiting_retry(make_cluster, rabbitmq) -> None:  # noqa: ANN001
    """keda-on (minReplicas 0), no worker running, the jobs queue empty: no retry leaves the fleet at zero; one
    retry waiting in its delay queue, published as a worker publishes it, activates it; and so does that retry
    held unacked by a worker's retry mover until it is due (KEDA with excludeUnacknowledged would read 0 then).
    The delay queues the trigger reads are the broker's own answer to its regex: the worker's retry queues."""
    cluster, _ = make_cluster("keda-on")
    so = keda.scaled_objects(cluster)["cpw-worker"]
    assert so["spec"]["minReplicaCount"] == 0
    (worker,) = [r for r in cluster.of_kind("Deployment") if r.pod.name.startswith("cpw-worker-")]
    triggers = keda.rabbit_triggers(cluster, so, worker)
    for trigger in triggers:
        keda.check_consumed_by(trigger, worker)
    (jobs,) = [t for t in triggers if not t.regex]
    delay_triggers = [t for t in triggers if t.regex]  # one; none before the chart watched the delay queues
    topology = worker_topology(worker.env())
    vhost = urllib.parse.unquote(keda.worker_url(worker).path[1:]) or "/"
    budget = float(so["spec"].get("pollingInterval", 30)) + 10

    def fleet(retries_seen: int) -> int:
        """The replicas KEDA sets once the retry trigger reads `retries_seen` and the jobs trigger 0."""
        for retries in delay_triggers:
            assert retries.wait_reading(cluster, retries_seen, budget) == retries_seen
        assert jobs.wait_reading(cluster, 0, budget) == 0
        return keda.replicas(so, keda.is_active(triggers, cluster))

    async def never(delivery: Delivery) -> None:
        raise AssertionError("the jobs queue is empty")

    async def scenario() -> None:
        broker = RabbitMQBroker(rabbitmq.url_for(vhost), topology)
        await broker.connect()  # declares the job queue, the DLQ and the delay queues, as every process does
        try:
            assert await asyncio.to_thread(fleet, 0) == 0
            await broker.publish_retry(b"{}", message_id="r1", priority=0, headers={}, attempt=2, delay=3600)
            assert await asyncio.to_thread(fleet, 1) >= 1, "a waiting retry leaves the fleet at zero"
            (retries,) = delay_triggers
            matched = {q["name"] for q in await asyncio.to_thread(retries.queues, cluster)}
            assert matched == {topology.retry_queue(n) for n in topology.retry_attempts}
            held = await broker.consume_jobs(never, prefetch=1)  # starts the worker's retry mover
            ready_only = dataclasses.replace(retries, exclude_unacked=True)
            assert await asyncio.to_thread(ready_only.wait_reading, cluster, 0, budget) == 0, "never held"
            assert broker.retries_held == 1
            assert await asyncio.to_thread(fleet, 1) >= 1
            await held.cancel()
        finally:
            await broker.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))


@pytest.mark.parametrize("value_set", list(SECRETS))
def test_pods_run_as_rendered(value_set: str, make_cluster, pod_stats: Counter[str]) -> None:  # noqa: ANN001
    cluster, token = make_cluster(value_set)
    deployments, helm_tests = cluster.of_kind("Deployment"), cluster.of_kind("Pod")
    assert deployments and len(helm_tests) == 1
    scaled = keda.scaled_objects(cluster)
    for run in deployments:
        if cluster.owners[run.pod.name] not in scaled:
            run.start()
    for run in deployments:
        if run.process is not None:
            wait_up(run)
    for run in deployments:
        if run.process is None:
            scale_as_keda(cluster, token, scaled[cluster.owners[run.pod.name]], run)
    for _, run, port, path in monitor.targets(cluster):  # PodMonitors and ServiceMonitors, as Prometheus scrapes
        monitor.scrape(run, port, path)

    for service in cluster.services:
        for port in service["spec"]["ports"]:
            run = cluster.selected(service)
            assert run is not None, f"Service {service['metadata']['name']} selects no running pod"
            target = kube.named_port(run.container, port.get("targetPort", port["port"]))
            assert target in listening_ports(run.pid()), f"{service['metadata']['name']}:{port['port']} -> {target}"

    assert submit_job(cluster, token) == "Succeeded"
    for run in deployments:  # with the PostgreSQL store, that state came through the projector
        if run.pod.name.startswith("cpw-projector-"):
            status = ops_status(run)
            assert status["role"] == "leader" and status["events"] > 0, status

    helm_test = helm_tests[0].start()
    assert helm_test.process is not None
    code = helm_test.process.wait(float(helm_test.pod.spec.get("activeDeadlineSeconds", 300)))
    assert code == 0, f"helm test pod exited {code}:\n{helm_test.output()}"
    HELM_TEST.append(code == 0)

    # The worker gets SIGTERM while a job runs (the demo provider takes 0.5 s): it must finish it, then exit 0.
    (worker,) = [r for r in deployments if r.pod.name.startswith("cpw-worker-")]
    with api_client(cluster, token) as http:
        for attempt in range(5):
            job_id = put_vm(http, f"drain{attempt}")
            if wait_status(http, job_id, ("Running",)) == "Running":
                break
        else:
            pytest.fail("no job was seen Running before it ended: cannot test the drain")
        code, took = worker.terminate()
        print(f"worker drained in {took:.1f}s")
        assert code == 0, f"{worker.pod.name} exited {code} on SIGTERM:\n{worker.output()}"
        assert wait_status(http, job_id, ()) == "Succeeded", "the in-flight job was not finished by the drain"
    for run in deployments:
        if run is not worker:
            code, _ = run.terminate()
            assert code == 0, f"{run.pod.name} exited {code} on SIGTERM:\n{run.output()}"
    if cluster.otlp is not None:  # global.tracing.otlpEndpoint: the collector it names got the spans
        assert cluster.otlp.requests["/v1/traces"] >= 1, f"no spans exported: {dict(cluster.otlp.requests)}"
    pod_stats["value_sets"] += 1
    pod_stats["workloads"] += len(deployments) + len(helm_tests)
    pod_stats["started"] += len(deployments) + 1
    pod_stats["probes_passed"] += sum(1 for r in deployments for k in r.log.passed.values() if k)
    pod_stats["jobs_ok"] += 1
