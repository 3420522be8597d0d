"""Tracing is configured by OTEL_* alone, and off (nothing imported, nothing exported) without them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from starlette.applications import Starlette

from controlplane_workers import tracing

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),  # nothing says where to
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": " none , "}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ],
)
def test_which_variables_turn_tracing_on(env, on):
    assert tracing.exporting_configured(env) is on


def test_off_by_default_imports_nothing_of_opentelemetry():
    """A worker and an API without OTEL_*: the job path never loads OpenTelemetry."""
    code = (
        "import sys, os\n"
        "for k in [k for k in os.environ if k.startswith('OTEL_')]: del os.environ[k]\n"
        "from controlplane_workers import tracing\n"
        "import controlplane_workers.worker, controlplane_workers.queue, controlplane_workers.run\n"
        "import controlplane_api.serve\n"
        "assert tracing.setup_from_env('cpw-worker') is False and tracing.enabled is False\n"
        "from starlette.applications import Starlette\n"
        "app = Starlette(); assert tracing.instrument_app(app) is app and not app.user_middleware\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_instrument_app_adds_one_server_span_middleware_when_on():
    from tests.observability.spans import SpanRecorder

    recorder = SpanRecorder()
    tracing.enable(recorder.provider)
    try:
        app = Starlette()
        assert tracing.instrument_app(app) is app
        [middleware] = app.user_middleware
        assert middleware.kwargs["exclude_spans"] == ["receive", "send"]
    finally:
        tracing.disable()
        recorder.shutdown()


def test_setup_from_env_with_an_endpoint_configures_an_otlp_http_exporter():
    code = (
        "import os\n"
        "os.environ.update(OTEL_EXPORTER_OTLP_ENDPOINT='http://127.0.0.1:9', OTEL_RESOURCE_ATTRIBUTES='team=a')\n"
        "from controlplane_workers import tracing\n"
        "assert tracing.setup_from_env('cpw-worker', instance_id='w-1', version='9.9')\n"
        "from opentelemetry import trace\n"
        "provider = trace.get_tracer_provider()\n"
        "attrs = dict(provider.resource.attributes)\n"
        "assert attrs['service.name'] == 'cpw-worker' and attrs['service.instance.id'] == 'w-1', attrs\n"
        "assert attrs['team'] == 'a' and attrs['service.version'] == '9.9', attrs\n"
        "[processor] = provider._active_span_processor._span_processors\n"
        "exporter = processor._batch_processor._exporter\n"
        "assert type(exporter).__module__.endswith('proto.http.trace_exporter'), type(exporter)\n"
        "assert exporter._endpoint == 'http://127.0.0.1:9/v1/traces', exporter._endpoint\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_otel_service_name_wins_over_the_default():
    code = (
        "import os\n"
        "os.environ.update(OTEL_TRACES_EXPORTER='console', OTEL_SERVICE_NAME='billing-workers')\n"
        "from controlplane_workers import tracing\n"
        "assert tracing.setup_from_env('cpw-worker')\n"
        "from opentelemetry import trace\n"
        "assert trace.get_tracer_provider().resource.attributes['service.name'] == 'billing-workers'\n"
        "tracing.shutdown()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_charts_default_protocol_grpc_selects_the_grpc_exporter():
    """The chart sets OTEL_EXPORTER_OTLP_PROTOCOL=grpc unless told otherwise."""
    code = (
        "import os\n"
        "os.environ.update(OTEL_EXPORTER_OTLP_ENDPOINT='http://127.0.0.1:9', OTEL_EXPORTER_OTLP_PROTOCOL='grpc')\n"
        "from controlplane_workers import tracing\n"
        "assert tracing.setup_from_env('cpw-api')\n"
        "from opentelemetry import trace\n"
        "[processor] = trace.get_tracer_provider()._active_span_processor._span_processors\n"
        "exporter = processor._batch_processor._exporter\n"
        "assert type(exporter).__module__.endswith('proto.grpc.trace_exporter'), type(exporter)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_without_the_otel_extra_a_configured_process_warns_and_runs_untraced():
    code = (
        "import os, sys, logging\n"
        "for name in ['opentelemetry', 'opentelemetry.sdk', 'opentelemetry.sdk.trace']: sys.modules[name] = None\n"
        "os.environ['OTEL_EXPORTER_OTLP_ENDPOINT'] = 'http://127.0.0.1:9'\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from controlplane_workers import tracing\n"
        "assert tracing.setup_from_env('cpw-worker') is False and not tracing.enabled\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "controlplane-workers[otel]" in result.stderr
