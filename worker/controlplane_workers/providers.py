"""The provider contract, a registry, and loading providers into a worker.

A provider is any object with some of the methods `create_or_update_resource`, `get_resource`,
`delete_resource`, `list_resources`, `execute_action`, each taking a ResourceRequest. Providers
written for the ITL ControlPlane SDK fit unchanged (duck typing; no dependency on that SDK).

A PATCH (operation `update`) calls `update_resource` when the provider has one (`request.body` is the
patch); otherwise `get_resource`, a JSON merge patch (RFC 7396) of the body into it, then
`create_or_update_resource` with the merged resource, so every provider that can be read and written
answers PATCH without new code. `ResourceProvider` has no `update_resource` for that reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .models import PROVIDER_METHODS, Operation, ResourceRequest

ENTRY_POINT_GROUP = "controlplane_workers.providers"


class ResourceProvider:
    """Base class for providers; subclassing is optional, the method names are the contract."""

    async def create_or_update_resource(self, request: ResourceRequest) -> Any:
        raise NotImplementedError

    async def get_resource(self, request: ResourceRequest) -> Any:
        raise NotImplementedError

    async def delete_resource(self, request: ResourceRequest) -> Any:
        raise NotImplementedError

    async def list_resources(self, request: ResourceRequest) -> Any:
        raise NotImplementedError

    async def execute_action(self, request: ResourceRequest) -> Any:
        raise NotImplementedError


@runtime_checkable
class ProviderLookup(Protocol):
    def get_provider(self, provider_namespace: str, resource_type: str) -> Any: ...


class ResourceProviderRegistry:
    """(namespace, resource type) -> provider; `*` as the type serves every type of a namespace."""

    def __init__(self) -> None:
        self._providers: dict[tuple[str, str], Any] = {}

    def register_provider(self, provider_namespace: str, resource_type: str, provider: Any) -> None:
        self._providers[(provider_namespace.lower(), resource_type.lower())] = provider

    def get_provider(self, provider_namespace: str, resource_type: str) -> Any:
        ns, rt = provider_namespace.lower(), resource_type.lower()
        return self._providers.get((ns, rt)) or self._providers.get((ns, "*"))

    def list_providers(self) -> list[tuple[str, str]]:
        return sorted(self._providers)


class _AnyResource:
    """Serves every namespace and type with one provider object."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    def get_provider(self, provider_namespace: str, resource_type: str) -> Any:
        return self.provider


class _FirstMatch:
    def __init__(self, lookups: Iterable[ProviderLookup]) -> None:
        self.lookups = list(lookups)

    def get_provider(self, provider_namespace: str, resource_type: str) -> Any:
        for lookup in self.lookups:
            provider = lookup.get_provider(provider_namespace, resource_type)
            if provider is not None:
                return provider
        return None


def _is_provider(obj: Any) -> bool:
    return any(callable(getattr(obj, name, None)) for name in PROVIDER_METHODS.values())


def as_lookup(obj: Any) -> ProviderLookup:
    """A registry, a single provider, or a zero-argument factory returning either."""
    if isinstance(obj, ProviderLookup) and not inspect.isclass(obj):
        return obj
    if _is_provider(obj) and not inspect.isclass(obj):
        return _AnyResource(obj)
    if callable(obj):
        return as_lookup(obj())
    raise TypeError(f"{obj!r} is neither a provider registry, a provider nor a factory of one")


def import_object(spec: str) -> Any:
    """`package.module:attr` -> the object."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"provider spec {spec!r} must look like 'package.module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_providers(spec: str | None, *, use_entry_points: bool = True) -> ProviderLookup:
    """The providers a worker serves: `spec` first, then the installed entry points."""
    lookups: list[ProviderLookup] = []
    if spec:
        lookups.append(as_lookup(import_object(spec)))
    if use_entry_points:
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            lookups.append(as_lookup(entry_point.load()))
    if not lookups:
        raise LookupError(f"no provider configured: set CPW_PROVIDERS or install a {ENTRY_POINT_GROUP} entry point")
    return lookups[0] if len(lookups) == 1 else _FirstMatch(lookups)


def provider_method(
    provider: Any, operation: Operation, run_sync: Callable[..., Awaitable[Any]] = asyncio.to_thread
) -> Callable[..., Any] | None:
    """The provider's method for `operation`; for `update` without one, get + merge + create_or_update."""
    method = getattr(provider, PROVIDER_METHODS[operation], None)
    if callable(method):
        return method
    if operation is Operation.UPDATE:
        return merged_update(provider, run_sync)
    return None


def merged_update(provider: Any, run_sync: Callable[..., Awaitable[Any]]) -> Callable[..., Any] | None:
    """PATCH for a provider that only reads and writes: the current resource, the patch merged in, written."""
    get = provider_method(provider, Operation.GET)
    put = provider_method(provider, Operation.CREATE)
    if get is None or put is None:
        return None

    async def update_resource(request: ResourceRequest) -> Any:
        current = to_jsonable(await call_provider(get, request, run_sync))
        merged = merge_patch(current if isinstance(current, dict) else {}, request.body)
        location = merged.get("location") if isinstance(merged.get("location"), str) else request.location
        return await call_provider(put, request.model_copy(update={"body": merged, "location": location}), run_sync)

    return update_resource


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def is_sync(method: Callable[..., Any]) -> bool:
    """A plain `def` method: it needs a thread of its own."""
    return not inspect.iscoroutinefunction(method)


async def call_provider(
    method: Callable[..., Any],
    request: ResourceRequest,
    run_sync: Callable[..., Awaitable[Any]] = asyncio.to_thread,
) -> Any:
    """Await an async method; run a sync one in a thread (`run_sync`) so the event loop keeps serving."""
    if not is_sync(method):
        return await method(request)
    result = await run_sync(method, request)
    if inspect.isawaitable(result):
        return await result
    return result


def to_jsonable(result: Any) -> Any:
    """Provider results are pydantic models, dataclasses or plain data: make them JSON data."""
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return to_jsonable_python(dataclasses.asdict(result))
    return to_jsonable_python(result)
