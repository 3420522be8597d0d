r"""A resource provider for `Example.Storage/storageAccounts`, the shape of a real one.

Run it in a worker (the folder `examples` on the path, the registry named by CPW_PROVIDERS):

    PYTHONPATH=examples CPW_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/ \
        CPW_PROVIDERS=my_provider:registry cpw worker

or with the API on the embedded broker, in one process:

    PYTHONPATH=examples cpw dev --providers my_provider:registry

What it shows:
- async methods taking a ResourceRequest and returning the ARM resource (a dict or a pydantic model);
- a sync method (`get_resource`): the worker runs it in a thread, the event loop keeps serving;
- RetryableError: a transient failure, retried with backoff until the job's attempts run out;
- PermanentError(code=...): fails the job now (not a dead letter), `code` becomes the ARM error code;
- current_job(): the job id and attempt number of the job being run, e.g. as an idempotency key;
- request.tenant: the tenant whose token submitted the job. Accounts are kept per tenant, so two
  tenants naming the same resource id never see or change each other's.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from controlplane_workers import (
    PermanentError,
    ResourceProvider,
    ResourceProviderRegistry,
    ResourceRequest,
    RetryableError,
)
from controlplane_workers.context import current_job

NAMESPACE = "Example.Storage"
TYPE = "storageAccounts"
SKUS = {"Standard_LRS", "Standard_GRS", "Premium_LRS"}


def resource_id(request: ResourceRequest) -> str:
    return (
        f"/subscriptions/{request.subscription_id}/resourceGroups/{request.resource_group}"
        f"/providers/{NAMESPACE}/{TYPE}/{request.resource_name}"
    )


def key(request: ResourceRequest) -> tuple[str | None, str]:
    """Where an account is kept: per tenant, then by resource id."""
    return (request.tenant, resource_id(request))


class StorageAccounts(ResourceProvider):
    """Keeps accounts in memory. A real provider calls its backend here."""

    def __init__(self) -> None:
        self.accounts: dict[tuple[str | None, str], dict[str, Any]] = {}
        self.lock = threading.Lock()  # get_resource runs in a worker thread

    async def create_or_update_resource(self, request: ResourceRequest) -> dict[str, Any]:
        job = current_job()  # None only when called outside a worker (e.g. in a unit test)
        sku = request.body.get("sku", {}).get("name", "Standard_LRS")
        if sku not in SKUS:
            # Another attempt cannot fix this: the job fails at once with this ARM error code.
            raise PermanentError(f"sku {sku!r} is not one of {sorted(SKUS)}", code="InvalidParameter")
        if request.body.get("properties", {}).get("simulateBusyBackend") and job and job.attempt == 1:
            # Transient: the worker retries after a backoff (attempt 2 succeeds here).
            raise RetryableError("storage backend busy, try again")
        await asyncio.sleep(0.01)  # the backend call
        account = {
            "id": resource_id(request),
            "name": request.resource_name,
            "type": f"{NAMESPACE}/{TYPE}",
            "location": request.location or request.body.get("location") or "westeurope",
            "sku": {"name": sku},
            "properties": {
                "provisioningState": "Succeeded",
                "primaryEndpoint": f"https://{request.resource_name}.blob.example.net/",
                # The job id is stable across attempts: a natural idempotency key for the backend.
                "createdByJob": job.job_id if job else None,
                "attempt": job.attempt if job else None,
            },
        }
        with self.lock:
            self.accounts[key(request)] = account
        return account

    def get_resource(self, request: ResourceRequest) -> dict[str, Any]:
        # A plain (blocking) method: the worker runs it in one of its sync threads (CPW_SYNC_THREADS).
        with self.lock:
            account = self.accounts.get(key(request))
        if account is None:
            raise PermanentError(
                f"storage account {request.resource_name!r} not found", code="ResourceNotFound"
            )
        return account

    async def delete_resource(self, request: ResourceRequest) -> None:
        with self.lock:
            self.accounts.pop(key(request), None)

    async def list_resources(self, request: ResourceRequest) -> dict[str, Any]:
        prefix = f"/subscriptions/{request.subscription_id}/resourceGroups/{request.resource_group}/"
        with self.lock:
            accounts = [a for (t, rid), a in self.accounts.items() if t == request.tenant and rid.startswith(prefix)]
        return {"value": accounts}

    async def execute_action(self, request: ResourceRequest) -> dict[str, Any]:
        if request.action != "regenerateKey":
            raise PermanentError(f"unknown action {request.action!r}", code="InvalidAction")
        account = await asyncio.to_thread(self.get_resource, request)
        return {
            "keyName": request.body.get("keyName", "key1"),
            "regenerated": True,
            "account": account["name"],
        }


# What CPW_PROVIDERS=my_provider:registry loads: (namespace, type) -> provider. A provider object or a
# zero-argument factory works too; a provider written for the ITL ControlPlane SDK fits unchanged.
registry = ResourceProviderRegistry()
registry.register_provider(NAMESPACE, TYPE, StorageAccounts())
