"""`Demo.Compute/virtualMachines`: a provider that takes a moment and returns a resource.

It is what `cpw dev` runs, and the shape of a real provider: async methods taking a
ResourceRequest and returning the ARM resource. Machines are kept per tenant (`request.tenant`):
two tenants naming the same resource id hold two machines, and neither sees the other's.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ..errors import PermanentError
from ..models import ResourceRequest
from ..providers import ResourceProvider, ResourceProviderRegistry

NAMESPACE = "Demo.Compute"
TYPE = "virtualMachines"


Key = tuple[str | None, str]  # (tenant, resource id)


def _key(request: ResourceRequest) -> Key:
    return (request.tenant, _resource_id(request))


def _resource_id(request: ResourceRequest) -> str:
    return (
        f"/subscriptions/{request.subscription_id}/resourceGroups/{request.resource_group}"
        f"/providers/{NAMESPACE}/{TYPE}/{request.resource_name}"
    )


class VirtualMachines(ResourceProvider):
    """Keeps machines in memory; each operation waits `CPW_DEMO_DELAY` seconds (default 0.5)."""

    def __init__(self, delay: float | None = None) -> None:
        self.delay = float(os.environ.get("CPW_DEMO_DELAY", "0.5")) if delay is None else delay
        self.machines: dict[Key, dict[str, Any]] = {}

    async def create_or_update_resource(self, request: ResourceRequest) -> dict[str, Any]:
        await asyncio.sleep(self.delay)
        properties = dict(request.body.get("properties", {}))
        properties.setdefault("vmSize", "Standard_D2s_v5")
        properties["provisioningState"] = "Succeeded"
        properties["powerState"] = "running"
        machine = {
            "id": _resource_id(request),
            "name": request.resource_name,
            "type": f"{NAMESPACE}/{TYPE}",
            "location": request.location or request.body.get("location") or "westeurope",
            "properties": properties,
        }
        if request.body.get("tags") is not None:
            machine["tags"] = request.body["tags"]
        self.machines[_key(request)] = machine
        return machine

    async def get_resource(self, request: ResourceRequest) -> dict[str, Any]:
        await asyncio.sleep(self.delay / 10)
        machine = self.machines.get(_key(request))
        if machine is None:
            raise PermanentError(f"virtual machine {request.resource_name!r} not found", code="ResourceNotFound")
        return machine

    async def delete_resource(self, request: ResourceRequest) -> None:
        await asyncio.sleep(self.delay)
        self.machines.pop(_key(request), None)

    async def list_resources(self, request: ResourceRequest) -> dict[str, Any]:
        await asyncio.sleep(self.delay / 10)
        prefix = f"/subscriptions/{request.subscription_id}/resourceGroups/{request.resource_group}/"
        tenant = request.tenant
        return {"value": [m for (t, rid), m in self.machines.items() if t == tenant and rid.startswith(prefix)]}

    async def execute_action(self, request: ResourceRequest) -> dict[str, Any]:
        machine = await self.get_resource(request)
        states = {"start": "running", "stop": "stopped", "restart": "running", "deallocate": "deallocated"}
        if request.action not in states:
            raise PermanentError(f"unknown action {request.action!r}", code="InvalidAction")
        await asyncio.sleep(self.delay)
        machine["properties"]["powerState"] = states[request.action]
        return machine


def make_registry(delay: float | None = None) -> ResourceProviderRegistry:
    registry = ResourceProviderRegistry()
    registry.register_provider(NAMESPACE, TYPE, VirtualMachines(delay))
    return registry


registry = make_registry()
