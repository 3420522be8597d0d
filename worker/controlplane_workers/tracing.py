"""OpenTelemetry tracing: one trace from the HTTP request to the provider call, across retries.

W3C trace context travels in the job message's AMQP headers (`traceparent`, `tracestate`): the
submitter injects it inside a PRODUCER span around the publish, the worker extracts it into the
CONSUMER span of each delivery, and a retry re-injects it when it parks the job in a delay queue, so
every attempt of a job belongs to the trace of the request that submitted it. The provider call is
an INTERNAL span under the attempt. The API's HTTP server span comes from
opentelemetry-instrumentation-starlette. docs/tracing.md has the spans and their attributes.

Configured only by the standard `OTEL_*` variables, read once at process start by `setup_from_env`
(`cpw worker`, `cpw api`). Tracing is on when an exporter is named (`OTEL_TRACES_EXPORTER` other than
`none`) or an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
and `OTEL_SDK_DISABLED` is not `true`. Otherwise nothing is imported from OpenTelemetry and the hooks in
the job path cost one module attribute test (`tracing.enabled`). The SDK and the exporters are the
optional extra `otel`; without it a configured process logs one warning and runs untraced.

An application embedding the SDK (JobQueue, ProviderWorker) that set up its own TracerProvider calls
`enable()` (or `enable(provider)`) to have its jobs traced.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

from .redact import redact_text

if TYPE_CHECKING:  # pragma: no cover
    from opentelemetry.trace import Span, Tracer, TracerProvider

log = logging.getLogger(__name__)

T = TypeVar("T")

# True while jobs are traced. The job path tests this before it touches anything below.
enabled: bool = False
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_owned_provider: Any = None  # the SDK provider setup_from_env made (flushed by shutdown)

# What the job path enters instead of a span while tracing is off (reusable, costs next to nothing).
NO_SPAN = nullcontext()

INSTRUMENTATION = "controlplane_workers"
MESSAGING_SYSTEM = "rabbitmq"


# -- configuration
def exporting_configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = _exporter_names(env)
    if names is not None:
        return bool(names)
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _exporter_names(env: Mapping[str, str]) -> list[str] | None:
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        return None
    return [name for name in (part.strip().lower() for part in raw.split(",")) if name and name != "none"]


def setup_from_env(service_name: str, *, instance_id: str | None = None, version: str | None = None) -> bool:
    """Configure the OpenTelemetry SDK from OTEL_* for this process; True if traces are exported.

    `service_name` (cpw-worker, cpw-api) applies unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES
    names the service. Sampler (OTEL_TRACES_SAMPLER), batching (OTEL_BSP_*), propagators
    (OTEL_PROPAGATORS, default tracecontext,baggage) and the exporter's endpoint, headers, timeout
    and compression are read by the SDK and the exporter themselves.
    """
    env = os.environ
    if not exporting_configured(env):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_* asks for traces but the OpenTelemetry SDK is not installed "
            "(pip install 'controlplane-workers[otel]'): tracing is off"
        )
        return False
    exporters = []
    for name in _exporter_names(env) or ["otlp"]:
        exporter = _exporter(name, env)
        if exporter is not None:
            exporters.append(exporter)
    if not exporters:
        return False
    attributes: dict[str, str] = {}
    named = "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not env.get("OTEL_SERVICE_NAME") and not named:
        attributes["service.name"] = service_name
    if instance_id and "service.instance.id=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.instance.id"] = instance_id
    if version:
        attributes["service.version"] = version
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    global _owned_provider
    _owned_provider = provider
    enable(provider)
    log.info("tracing on", extra={"exporters": [type(e).__name__ for e in exporters]})
    return True


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    try:
        if name == "otlp":
            protocol = (
                (
                    env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or "http/protobuf"
                )
                .strip()
                .lower()
            )
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_exporter

                return grpc_exporter.OTLPSpanExporter()
            if protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_exporter

                return http_exporter.OTLPSpanExporter()
            log.error("OTLP protocol %r is not supported (grpc, http/protobuf): no traces exported", protocol)
            return None
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter()
        from importlib.metadata import entry_points

        for point in entry_points(group="opentelemetry_traces_exporter", name=name):
            return point.load()()
        log.error("no span exporter named %r is installed (OTEL_TRACES_EXPORTER)", name)
    except ImportError as exc:
        log.error("span exporter %r is not installed: %s (pip install 'controlplane-workers[otel]')", name, exc)
    return None


def enable(tracer_provider: TracerProvider | None = None) -> None:
    """Trace jobs with `tracer_provider` (default: the global one the application set up)."""
    from opentelemetry import trace

    global enabled, _tracer, _provider
    _provider = tracer_provider or trace.get_tracer_provider()
    _tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=_provider)
    enabled = True


def disable() -> None:
    global enabled, _tracer, _provider
    enabled = False
    _tracer = None
    _provider = None


def shutdown() -> None:
    """Flush and stop the provider setup_from_env made (at process exit)."""
    global _owned_provider
    provider, _owned_provider = _owned_provider, None
    disable()
    if provider is not None:
        try:
            provider.shutdown()
        except Exception:  # an unreachable collector must not fail the shutdown
            log.warning("tracing: flushing spans failed", exc_info=True)


def instrument_app(app: Any) -> Any:
    """Add the Starlette instrumentation's HTTP server spans to `app` when tracing is on.

    Call before the app serves its first request (Starlette builds its middleware stack then).
    """
    if not enabled:
        return app
    try:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.instrumentation.starlette import StarletteInstrumentor
    except ImportError:
        log.warning("opentelemetry-instrumentation-starlette is not installed: no HTTP server spans")
        return app
    StarletteInstrumentor.instrument_app(app, tracer_provider=_provider)
    # One span per request: the ASGI middleware would add a span for every receive and send
    # message of the request, which says nothing a job's trace needs.
    for middleware in getattr(app, "user_middleware", []):
        if getattr(middleware, "cls", None) is OpenTelemetryMiddleware:
            middleware.kwargs["exclude_spans"] = ["receive", "send"]
    return app


# -- propagation through AMQP headers
class _HeaderGetter:
    """Reads W3C headers from AMQP headers, whose strings may arrive as bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("latin-1")
        return [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def inject(headers: MutableMapping[str, Any]) -> None:
    """Write the current trace context into message headers (replacing an older one)."""
    from opentelemetry import propagate

    propagate.inject(headers)


def extract(headers: Mapping[str, Any]) -> Any:
    from opentelemetry import propagate

    return propagate.extract(headers, getter=_GETTER)  # type: ignore[arg-type]


# -- spans of the job path
@contextmanager
def publish_span(
    destination: str,
    headers: MutableMapping[str, Any],
    *,
    job_id: str | None,
    routing_key: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A PRODUCER span around a publish; the message's headers carry this span as the parent."""
    from opentelemetry.trace import SpanKind

    assert _tracer is not None
    attrs: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": destination,
    }
    if job_id:
        attrs["messaging.message.id"] = job_id
        attrs["cpw.job.id"] = job_id
    if routing_key is not None:
        attrs["messaging.rabbitmq.destination.routing_key"] = routing_key
    if attributes:
        attrs.update(attributes)
    with _tracer.start_as_current_span(
        f"publish {destination}",
        kind=SpanKind.PRODUCER,
        attributes=attrs,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        inject(headers)
        try:
            yield span
        except Exception as exc:
            record_error(span, exc)
            raise


@contextmanager
def consume_span(
    queue: str,
    headers: Mapping[str, Any],
    *,
    message_id: str | None,
    attempt: int,
    redelivered: bool,
    worker_id: str,
    routing_key: str,
) -> Iterator[Span]:
    """The CONSUMER span of one delivery, child of the publish whose context the headers carry."""
    from opentelemetry.trace import SpanKind

    assert _tracer is not None
    attrs: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue,
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "cpw.job.attempt": attempt,
        "cpw.worker.id": worker_id,
    }
    if message_id:
        attrs["messaging.message.id"] = message_id
        attrs["cpw.job.id"] = message_id
    if redelivered:
        attrs["cpw.delivery.redelivered"] = True
    with _tracer.start_as_current_span(
        f"process {queue}",
        context=extract(headers),
        kind=SpanKind.CONSUMER,
        attributes=attrs,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as exc:
            record_error(span, exc)
            raise


async def provider_span(call: Awaitable[T], *, name: str, attributes: Mapping[str, Any]) -> T:
    """Await the provider call inside an INTERNAL span; an exception marks the span as an error."""
    from opentelemetry.trace import SpanKind

    assert _tracer is not None
    with _tracer.start_as_current_span(
        name,
        kind=SpanKind.INTERNAL,
        attributes=dict(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            return await call
        except Exception as exc:
            record_error(span, exc)
            raise
        except BaseException:  # the job timeout, a cancel request or a drain stopped the provider
            span.set_attribute("cpw.provider.cancelled", True)
            raise


def record_error(span: Span, exc: BaseException) -> None:
    """Mark `span` failed with the exception's type and its redacted message (no traceback)."""
    from opentelemetry.trace import Status, StatusCode

    message = redact_text(str(exc))[:1000]
    span.add_event("exception", {"exception.type": type(exc).__name__, "exception.message": message})
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {message}"[:1000]))


def set_attributes(attributes: Mapping[str, Any]) -> None:
    """Set attributes on the current span, if it records."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(dict(attributes))


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span as hex, for the JSON logs; None outside a span."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
