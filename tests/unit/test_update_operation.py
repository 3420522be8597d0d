"""PATCH reaches every provider: its own update_resource, else get + JSON merge patch + create_or_update."""

from __future__ import annotations

import asyncio
from typing import Any

from controlplane_workers import ResourceRequest
from controlplane_workers.models import Operation
from controlplane_workers.providers import call_provider, merge_patch, provider_method


def test_merge_patch_follows_rfc_7396() -> None:
    target = {"a": 1, "b": {"c": 2, "d": 3}, "tags": {"x": "1"}}
    patch = {"b": {"c": None, "e": 4}, "tags": {"y": "2"}, "a": [1]}
    assert merge_patch(target, patch) == {"a": [1], "b": {"d": 3, "e": 4}, "tags": {"x": "1", "y": "2"}}
    assert target["b"] == {"c": 2, "d": 3}  # the current resource is not changed in place


class ReadWrite:
    def __init__(self) -> None:
        self.stored: dict[str, Any] = {"name": "vm", "location": "westeurope", "properties": {"size": "S", "n": 1}}

    def get_resource(self, request: ResourceRequest) -> dict[str, Any]:  # a sync method: run in a thread
        return self.stored

    async def create_or_update_resource(self, request: ResourceRequest) -> dict[str, Any]:
        self.stored = {**request.body, "written_location": request.location}
        return self.stored


class OwnUpdate(ReadWrite):
    async def update_resource(self, request: ResourceRequest) -> str:
        return "own"


def test_update_without_update_resource_merges_into_the_current_resource() -> None:
    provider = ReadWrite()
    method = provider_method(provider, Operation.UPDATE)
    assert method is not None
    request = ResourceRequest(resource_name="vm", body={"properties": {"size": "M", "n": None}})
    result = asyncio.run(call_provider(method, request))
    assert result["properties"] == {"size": "M"} and result["written_location"] == "westeurope"


def test_update_prefers_the_providers_own_method_and_needs_get_and_put() -> None:
    own = provider_method(OwnUpdate(), Operation.UPDATE)
    assert own is not None and asyncio.run(call_provider(own, ResourceRequest())) == "own"

    class ReadOnly:
        async def get_resource(self, request: ResourceRequest) -> None: ...

    assert provider_method(ReadOnly(), Operation.UPDATE) is None
