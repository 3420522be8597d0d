"""OffloadingProviderRegistry and WaitingOffloadingProviderRegistry end to end: a real RabbitMQ, a real `cpw worker`
running the demo provider (stateful, so one worker), each of the five provider methods answered by the fleet."""

from __future__ import annotations

import pytest

from controlplane_workers import (
    JobQueue,
    JobStatus,
    OffloadingProviderRegistry,
    Operation,
    WaitingOffloadingProviderRegistry,
)
from controlplane_workers.examples.demo import NAMESPACE, TYPE
from tests.api.support import start_worker

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(90)]

VM = {"subscription_id": "sub-1", "resource_group": "rg-1", "resource_name": "vm1", "location": "westeurope"}


@pytest.fixture
async def demo_worker(vhost_url, tmp_path):
    worker = await start_worker(
        vhost_url, tmp_path, CPW_PROVIDERS="controlplane_workers.examples.demo:registry", CPW_DEMO_DELAY=0.3
    )
    yield worker
    worker.stop()


async def test_each_method_publishes_a_job_the_worker_runs(vhost_url, demo_worker):
    async with JobQueue(vhost_url) as queue:
        registry = OffloadingProviderRegistry(queue, priorities={Operation.LIST: 2})

        async def done(accepted, operation: Operation, priority: int):  # noqa: ANN001, ANN202
            assert (accepted.status, accepted.operation) == (JobStatus.ACCEPTED, operation)  # at once, no result
            assert (accepted.provider_namespace, accepted.resource_type) == (NAMESPACE, TYPE)
            assert accepted.result is None and accepted.error is None
            result = await registry.get_job_result(accepted.job_id, timeout=30)
            assert result is not None and result.operation is operation and result.priority == priority, result
            return result

        body = {**VM, "body": {"properties": {"vmSize": "Standard_B1s"}}}
        created = await done(await registry.create_or_update_resource(NAMESPACE, TYPE, body), Operation.CREATE, 7)
        assert created.status is JobStatus.SUCCEEDED and created.result["properties"]["vmSize"] == "Standard_B1s"
        assert created.resource_name == "vm1"

        got = await done(await registry.get_resource(NAMESPACE, TYPE, VM), Operation.GET, 8)
        assert got.status is JobStatus.SUCCEEDED and got.result == created.result

        stop = {**VM, "action": "stop"}
        acted = await done(await registry.execute_action(NAMESPACE, TYPE, stop, priority=9), Operation.ACTION, 9)
        assert acted.status is JobStatus.SUCCEEDED and acted.result["properties"]["powerState"] == "stopped"

        everything = {**VM, "resource_name": ""}
        listed = await done(await registry.list_resources(NAMESPACE, TYPE, everything), Operation.LIST, 2)
        assert listed.status is JobStatus.SUCCEEDED and [m["name"] for m in listed.result["value"]] == ["vm1"]

        deleted = await done(await registry.delete_resource(NAMESPACE, TYPE, VM), Operation.DELETE, 6)
        assert deleted.status is JobStatus.SUCCEEDED and deleted.result is None

        gone = await done(await registry.get_resource(NAMESPACE, TYPE, VM), Operation.GET, 8)
        assert gone.status is JobStatus.FAILED and gone.error is not None and gone.error.code == "ResourceNotFound"


async def test_the_waiting_registry_answers_with_the_result_when_it_comes_in_time(vhost_url, demo_worker):
    async with JobQueue(vhost_url) as queue:
        waiting = WaitingOffloadingProviderRegistry(queue, timeout=30)
        created = await waiting.create_or_update_resource(NAMESPACE, TYPE, VM)
        assert created.status is JobStatus.SUCCEEDED and created.result["name"] == "vm1" and created.error is None

        missing = await waiting.get_resource(NAMESPACE, TYPE, {**VM, "resource_name": "nope"})
        assert missing.status is JobStatus.FAILED and missing.result is None
        assert missing.error.code == "ResourceNotFound"

        # The demo takes 0.3 s per create: a 50 ms wait answers Accepted, and the job still runs to its end.
        impatient = WaitingOffloadingProviderRegistry(queue, timeout=0.05)
        late = await impatient.create_or_update_resource(NAMESPACE, TYPE, {**VM, "resource_name": "vm2"})
        assert late.status is JobStatus.ACCEPTED and late.result is None
        final = await impatient.get_job_result(late.job_id, timeout=30)
        assert final is not None and final.status is JobStatus.SUCCEEDED and final.result["name"] == "vm2"
