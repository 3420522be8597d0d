"""Generates docs/configuration.md: every environment variable and every chart value.

    python docs/generate.py            # = make docs: rewrite docs/configuration.md
    python docs/generate.py --check    # exit 1 if the file is stale (as tests/docs checks)

Sources, so the page cannot drift from the code:
- environment variables: the pydantic-settings model `controlplane_workers.settings.Settings` (name = the
  first `validation_alias`, other accepted names, type, default, bounds, description) plus the few
  variables read outside it (`OTHER_ENV`; a test greps the code so none is missed);
- which variables the chart sets: the `- name: CPW_...` entries of the chart templates;
- chart values: the `# --` comments of the values files, parsed by the chart docs generator
  (tests/chart/docs_gen.py, which also writes docs/chart.md), with type and allowed values taken from the
  charts' values.schema.json.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "worker", ROOT / "api-adapter"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from pydantic_core import PydanticUndefined  # noqa: E402

from controlplane_api.settings import ApiSettings  # noqa: E402
from controlplane_workers import settings as settings_module  # noqa: E402
from tests.chart import docs_gen  # noqa: E402

DOC = ROOT / "docs" / "configuration.md"
CHART = ROOT / "charts" / "controlplane-workers"
SCHEMAS = {
    "umbrella": CHART / "values.schema.json",
    "workers": CHART / "charts" / "worker" / "values.schema.json",
    "api": CHART / "charts" / "api-adapter" / "values.schema.json",
}

# Variables read outside the Settings model: (name, read by, default, meaning).
OTHER_ENV = [
    (
        "CPW_RABBITMQ_URL_FILE",
        "all",
        "-",
        "File holding `CPW_RABBITMQ_URL` (how the chart passes it: a mounted Secret); wins over it.",
    ),
    (
        "CPW_RABBITMQ_MANAGEMENT_URL_FILE",
        "all",
        "-",
        "File holding `CPW_RABBITMQ_MANAGEMENT_URL`. Wins over the variable.",
    ),
    (
        "CPW_DEMO_DELAY",
        "demo provider",
        "`0.5`",
        "Seconds each operation of the demo provider (`controlplane_workers.examples.demo`) takes.",
    ),
    (
        "CPW_API_URL",
        "`cpw jobs`",
        "`http://127.0.0.1:8000`",
        "The API the `cpw jobs` client talks to (`--api` wins).",
    ),
    ("CPW_API_TOKEN", "`cpw jobs`", "-", "Bearer token `cpw jobs` sends."),
    (
        "CPW_API_TOKEN_FILE",
        "`cpw jobs`",
        "-",
        "File holding the bearer token; the chart's helm test pod sets it. "
        "Known gap: `cpw jobs` reads only `CPW_API_TOKEN` today.",
    ),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "worker, api, chart",
        "-",
        "Turns tracing on (docs/tracing.md): spans go there over OTLP. Set by the chart from "
        "`global.tracing.otlpEndpoint`, with `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`, "
        "`OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.",
    ),
    (
        "OTEL_TRACES_EXPORTER",
        "worker, api",
        "- (off)",
        "Tracing also turns on when this names an exporter (`otlp`, `console`); `none` keeps it off, as do "
        "`OTEL_SDK_DISABLED=true` and the absence of both this and an endpoint "
        "(`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` too). Protocol: `OTEL_EXPORTER_OTLP_PROTOCOL` or "
        "`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `http/protobuf` (default) or `grpc`. Service: "
        "`OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`, default `cpw-worker` / `cpw-api`. Needs the `otel` extra.",
    ),
]

# Short texts for settings whose Field has no `description` yet; a Field description always wins.
FALLBACK = {
    "exchange": "Exchange jobs are published to (topic; routing key `<namespace>.<type>.<operation>`).",
    "jobs_queue": "The work queue the workers consume (durable, priorities 0-9, dead-letters to the DLX).",
    "results_stream": "Stream of job copies (Accepted) and worker events that every API replica reads.",
    "control_stream": "Stream of cancel requests that workers read.",
    "heartbeat_exchange": "Fanout exchange of worker heartbeats (the fleet view, `GET /workers`).",
    "worker_id": "Name of this worker in heartbeats, logs and events (the chart sets the pod name).",
    "max_concurrent_jobs": "Jobs one worker runs at once; also the AMQP prefetch.",
    "max_attempts": "Attempts per job before it is dead-lettered (retryable errors, timeouts).",
    "job_timeout": "Seconds one attempt may run before it is cancelled and retried.",
    "drain_timeout": "Seconds running jobs get to finish after SIGTERM; the rest are requeued.",
    "retry_base_delay": "First retry delay in seconds; doubles per attempt.",
    "retry_max_delay": "Longest retry delay in seconds.",
    "retry_jitter": "Random spread of retry delays (0.25 = +/-25 %).",
    "heartbeat_interval": "Seconds between worker heartbeats.",
    "health_host": "Address of the ops port (health, status, metrics).",
    "health_port": "The ops port: /health/live, /health/ready, /health, /status, /metrics.",
    "log_level": "Log level.",
    "log_format": "`json` (one object per line, for log collectors) or `text`.",
    "api_host": "Address the API listens on.",
    "api_port": "Port of the public API.",
    "api_tokens_file": "JSON or YAML file mapping bearer tokens to tenants; re-read when it changes.",
    "api_max_body_bytes": "Largest request body accepted (413 above).",
    "api_retry_after": "Retry-After seconds on 202, 429 and 503 answers.",
    "api_tenant_max_queued": "Jobs one tenant may have Accepted or Running before 429.",
    "api_index_max_jobs": "Jobs the API's status index holds (oldest finished evicted first).",
}
COMPUTED_DEFAULTS = {"worker_id": "`<hostname>-<pid>`"}
GROUP_TITLES = {
    "broker": "Broker and topology",
    "worker": "Worker",
    "ops port and logs": "Ops port and logs",
    "API adapter": "API adapter",
}


# -- environment variables -------------------------------------------------------------------------


def _groups() -> dict[str, str]:
    """field name -> the `# -- group` comment above it in settings.py."""
    groups, current = {}, "other"
    source = inspect.getsource(settings_module.Settings) + inspect.getsource(ApiSettings)
    for line in source.splitlines():
        m = re.match(r"\s*# -- (.+?)\s*$", line)
        if m:
            current = m[1]
            continue
        m = re.match(r"\s*(\w+)\s*:\s*[^=]+=\s*Field\(", line)
        if m:
            groups[m[1]] = current
    return groups


def _type(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(f"`{v}`" for v in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type(a) for a in args) + " (optional)"
    return {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}.get(
        annotation, str(annotation)
    )


def _bounds(metadata: list[Any]) -> str:
    out = []
    for item in metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                out.append(f"{sign} {getattr(item, attr)}")
        if getattr(item, "pattern", None):
            out.append(f"matches `{item.pattern}`")
    return ", ".join(out)


def _default(name: str, field: Any) -> str:
    if field.default is PydanticUndefined:
        return COMPUTED_DEFAULTS.get(name, "computed at start")
    if field.default is None:
        return "-"
    value = field.default
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def chart_env() -> dict[str, set[str]]:
    """Env var -> the components whose containers the chart gives it."""
    component = {"worker": "worker", "api-adapter": "api", "common-lib": "worker, api"}
    # templates of one component inside a subchart or the library: the PostgreSQL store's pods
    by_file = {"_postgresql.tpl": "api, projector", "projector.yaml": "projector"}
    out: dict[str, set[str]] = {}
    for path in sorted(CHART.rglob("templates/*")):
        if path.suffix not in (".yaml", ".tpl"):
            continue
        parts = path.relative_to(CHART).parts
        who = (
            by_file.get(path.name) or component.get(parts[1], "?")
            if parts[0] == "charts"
            else ("helm test" if "tests" in parts else "umbrella")
        )
        for name in re.findall(r"-\s+name:\s+((?:CPW|OTEL)_\w+)", path.read_text()):
            out.setdefault(name, set()).update(w.strip() for w in who.split(","))
    return out


def env_values(tables: dict[str, list[docs_gen.ValueDoc]]) -> dict[str, list[str]]:
    """Env var -> chart values whose description names it."""
    out: dict[str, list[str]] = {}
    for doc in (row for rows in tables.values() for row in rows):
        for name in re.findall(r"\b((?:CPW|OTEL)_[A-Z_]+[A-Z])\b", doc.description):
            out.setdefault(name, []).append(f"`{doc.key}`")
    return out


def settings_section(tables: dict[str, list[docs_gen.ValueDoc]]) -> str:
    fields = ApiSettings.model_fields  # the core's Settings and the API's own
    groups = _groups()
    by_chart, by_value = chart_env(), env_values(tables)
    secret_files = set(settings_module.SECRET_FILES)
    out: list[str] = []
    order: list[str] = []
    for name in fields:
        if groups.get(name, "other") not in order:
            order.append(groups.get(name, "other"))
    for group in order:
        out += [
            f"### {GROUP_TITLES.get(group, group[:1].upper() + group[1:])}",
            "",
            "| Variable | Also read as | Type | Default | Allowed | Chart | Description |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, field in fields.items():
            if groups.get(name, "other") != group:
                continue
            names = [str(n) for n in field.validation_alias.choices]
            env, aliases = names[0], names[1:]
            if name in secret_files:
                aliases.append(f"{env}_FILE")
            chart = ""
            if env in by_chart or f"{env}_FILE" in by_chart:
                who = sorted(by_chart.get(env, set()) | by_chart.get(f"{env}_FILE", set()))
                via = " from " + ", ".join(by_value[env]) if env in by_value else ""
                chart = f"{' and '.join(who)}{via}"
            description = field.description or FALLBACK.get(name, "")
            out.append(
                "| "
                + " | ".join(
                    _cell(c)
                    for c in [
                        f"`{env}`",
                        ", ".join(f"`{a}`" for a in aliases),
                        _type(field.annotation),
                        _default(name, field),
                        _bounds(field.metadata),
                        chart,
                        description,
                    ]
                )
                + " |"
            )
        out.append("")
    out += [
        "### Read outside the settings model",
        "",
        "| Variable | Read by | Default | Description |",
        "| --- | --- | --- | --- |",
    ]
    out += [f"| `{n}` | {who} | {d} | {_cell(text)} |" for n, who, d, text in OTHER_ENV]
    return "\n".join(out) + "\n"


# -- chart values ----------------------------------------------------------------------------------


def _schema_bounds(node: dict[str, Any] | None) -> str:
    if not node:
        return ""
    out = []
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if key in node:
            out.append(f"{sign} {node[key]}")
    if "minLength" in node and node["minLength"] > 0:
        out.append("not empty")
    if "maxLength" in node:
        out.append(f"<= {node['maxLength']} chars")
    if "pattern" in node:
        out.append(f"matches `{node['pattern']}`")
    if node.get("required"):
        out.append("requires " + ", ".join(f"`{r}`" for r in node["required"]))
    return ", ".join(out)


def chart_tables() -> dict[str, list[docs_gen.ValueDoc]]:
    return {
        name: [doc._replace(key=prefix + doc.key) for doc in docs_gen.documented_values(path)]
        for name, (path, prefix) in docs_gen.TABLES.items()
    }


def values_section(tables: dict[str, list[docs_gen.ValueDoc]]) -> str:
    import yaml

    titles = {
        "umbrella": "Umbrella (`charts/controlplane-workers/values.yaml`)",
        "workers": "Workers (`workers.*`, `charts/worker/values.yaml`)",
        "api": "API adapter (`api.*`, `charts/api-adapter/values.yaml`)",
    }
    out: list[str] = []
    for name, (path, prefix) in docs_gen.TABLES.items():
        values = yaml.safe_load(path.read_text())
        schema = json.loads(SCHEMAS[name].read_text())
        out += [
            f"### {titles[name]}",
            "",
            "| Key | Type | Default | Allowed | Description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for doc in tables[name]:
            local = doc.key[len(prefix) :]
            value = docs_gen._lookup(values, local)
            node = docs_gen.schema_node(schema, local)
            shown = doc.default or f"`{json.dumps(value)}`"
            out.append(
                "| "
                + " | ".join(
                    _cell(c)
                    for c in [
                        f"`{doc.key}`",
                        doc.type or docs_gen.schema_type(node, value),
                        shown,
                        _schema_bounds(node),
                        doc.description,
                    ]
                )
                + " |"
            )
        out.append("")
    return "\n".join(out)


HEADER = """# Configuration reference

<!-- Generated by docs/generate.py from the settings models, the charts' values and values.schema.json.
     Do not edit by hand: run `make docs` (tests/docs/test_configuration.py fails when it is stale). -->

Every knob of the processes and of the Helm chart, generated from their sources. For what the settings
do together, see [architecture.md](architecture.md), [operations.md](operations.md) and
[chart.md](chart.md).

## Environment variables

`cpw worker`, `cpw dlq` and `cpw queues` read the core's settings model (`worker/controlplane_workers/settings.py`,
pydantic-settings); `cpw api` and `cpw dev` read the API's, which adds the `CPW_API_*` settings to it
(`api-adapter/controlplane_api/settings.py`):

- each setting is read from its variable, or from one of the names in *Also read as* (the seed's
  names: `RABBITMQ_URL`, `WORKER_ID`, `LOG_LEVEL`, `HEALTH_CHECK_PORT`); command-line flags such as
  `--url` and `--providers` win over both;
- secrets are also read from a file: `CPW_RABBITMQ_URL_FILE=/path` (how the chart passes them, from
  a Secret volume) wins over `CPW_RABBITMQ_URL`;
- a bad value stops the process at start with exit code 2 and one line naming the variable, e.g.
  `cpw: configuration error: CPW_MAX_CONCURRENT_JOBS: Input should be greater than or equal to 1`;
- `cpw config` prints the effective settings as JSON, passwords redacted; `cpw api --print-config` the
  API's, with its `CPW_API_*` settings.

*Chart* names the containers the Helm chart sets the variable in, and the chart value it comes from;
anything else can be set with `workers.extraEnv` / `api.extraEnv`.

"""


def render() -> str:
    tables = chart_tables()
    return (
        HEADER + settings_section(tables) + "\n## Chart values\n\n"
        "Types and allowed values come from the charts' `values.schema.json` (Helm refuses values that do "
        "not match), defaults and descriptions from the `# --` comments of the values files. "
        "[chart.md](chart.md) explains them by topic; the seed's `rabbitmq.*` keys live under "
        "`global.rabbitmq.*`.\n\n" + values_section(tables)
    ).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if DOC.exists() and DOC.read_text() == text:
            return 0
        print(f"{DOC.relative_to(ROOT)} is stale: run `make docs`", file=sys.stderr)
        return 1
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
