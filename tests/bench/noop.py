"""The benchmark's provider: does nothing and returns a ~200-byte resource."""

from __future__ import annotations

from controlplane_workers import ResourceRequest


def resource(subscription_id: str, resource_group: str, resource_name: str) -> dict:
    """The ~200-byte answer every system's no-op returns."""
    return {
        "id": f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
        f"/providers/Bench.Noop/things/{resource_name}",
        "name": resource_name,
        "type": "Bench.Noop/things",
        "properties": {"provisioningState": "Succeeded"},
    }


def noop_result(request: dict) -> dict:
    """The peers' no-op task body: the same resource from the plain request dict."""
    return resource(request["subscription_id"], request["resource_group"], request["resource_name"])


class NoOp:
    async def create_or_update_resource(self, request: ResourceRequest) -> dict:
        return resource(request.subscription_id, request.resource_group, request.resource_name)


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
