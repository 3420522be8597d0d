"""The benchmark's provider: does nothing and returns a ~200-byte resource."""

from __future__ import annotations

from controlplane_workers import ResourceRequest


class NoOp:
    async def create_or_update_resource(self, request: ResourceRequest) -> dict:
        return {
            "id": f"/subscriptions/{request.subscription_id}/resourceGroups/{request.resource_group}"
            f"/providers/Bench.Noop/things/{request.resource_name}",
            "name": request.resource_name,
            "type": "Bench.Noop/things",
            "properties": {"provisioningState": "Succeeded"},
        }


registry = NoOp()


def arm_request(i: int) -> dict:
    """A ~300-byte ARM-style request."""
    return {
        "subscription_id": "00000000-0000-0000-0000-000000000001",
        "resource_group": "bench-rg",
        "resource_name": f"thing-{i:06d}",
        "location": "westeurope",
        "api_version": "2024-01-01",
        "body": {"location": "westeurope", "tags": {"env": "bench"}, "properties": {"size": "small", "n": i}},
    }
