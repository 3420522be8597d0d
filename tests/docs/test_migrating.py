"""docs/migrating.md: every block on the page runs, and every name in its tables exists.

- ```python: a program, run against a real RabbitMQ with a real `cpw worker` (the demo provider); each `# → X`
  comment is text its output must contain;
- ```yaml: umbrella chart values, rendered and linted (--strict) by the real Helm engine, and the seed's keys in
  them land where the seed says; the ci/seed-*-values.yaml files are quoted exactly;
- ```bash: each command by what it is: `kubectl create secret` runs (--dry-run=client) and the Secrets it makes
  must hold every Secret key the release reads; `helm install|upgrade|test` render, lint and check through the
  engine; `kubectl logs|scale|port-forward` name objects the release has; `curl` runs against the real worker's
  ops port and the real API, and its output carries what the `# →` line after it shows;
- ```promql: every metric and label is exported (tests/alerts/test_metric_names.py), and every query returns
  data from a real Prometheus scraping the real worker, labelled as the chart's PodMonitor labels it.
A block in any other language, or a command no runner knows, fails the test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import httpx
import pytest
import yaml

import controlplane_workers
from controlplane_workers.logs import JsonFormatter
from controlplane_workers.settings import Settings, load_settings
from tests.alerts.test_metric_names import SCRAPE_LABELS, selectors, worker_metrics
from tests.api.support import TOKENS, Proc, _env, start_api, start_worker
from tests.chart.chartlib import CHART, CI_VALUES, find, lint_problems, one, render_values
from tests.observability.prometheus import PrometheusServer, installed

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "migrating.md"
WORKER_ID = "core-provider-worker-5d8c7b9f4-x7k2p"  # the chart's worker id is its pod name
TOKEN = next(iter(TOKENS))
# What the guide's commands take from the shell.
SHELL = {"REGISTRY": "registry.example.com", "ONE_OF_THE_TOKENS": TOKEN, "TOKEN": TOKEN}


def blocks(language: str) -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", GUIDE.read_text(), re.S) if lang == language]


def expected(text: str) -> list[str]:
    """The `# → X` comments: what the line before prints."""
    return re.findall(r"#\s*→\s*(.+?)\s*$", text, re.M)


def test_every_block_is_in_a_language_this_test_runs() -> None:
    languages = [lang for lang, _ in re.findall(r"```(\w*)\n(.*?)```", GUIDE.read_text(), re.S)]
    assert set(languages) == {"python", "yaml", "bash", "promql"}, languages


# --- the platform the blocks run against -------------------------------------------------------------------


@dataclass
class Platform:
    url: str
    worker: Proc
    api: Proc


@pytest.fixture(scope="module")
async def platform(rabbitmq, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:  # noqa: ANN001
    vhost = rabbitmq.new_vhost()
    url = rabbitmq.url_for(vhost)
    tmp = tmp_path_factory.mktemp("migrating")
    demo = {"CPW_PROVIDERS": "controlplane_workers.examples.demo:registry", "CPW_DEMO_DELAY": 0.05}
    worker = await start_worker(url, tmp, WORKER_ID=WORKER_ID, **demo)
    try:
        api = await start_api(url, tmp)
        try:
            yield Platform(url, worker, api)
        finally:
            api.stop()
    finally:
        worker.stop()
        rabbitmq.delete_vhost(vhost)


# --- Python ------------------------------------------------------------------------------------------------


@pytest.mark.rabbitmq
@pytest.mark.parametrize("index", range(len(blocks("python"))))
async def test_python_block_runs(platform: Platform, index: int) -> None:
    code = blocks("python")[index]
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        env=_env(platform.url, {}),
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for text in expected(code):
        assert text in run.stdout, f"{text!r} not in the output:\n{run.stdout}"


# --- Helm values -------------------------------------------------------------------------------------------


def lands(values: dict[str, Any], docs: list[dict], release: str) -> None:
    """The seed's keys do what the seed says they do, in the rendered objects."""
    workers, api = values.get("workers", {}), values.get("api", {})
    worker = one(docs, "Deployment", f"{release}-worker")
    env = {e["name"]: e.get("value") for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    autoscaling = workers.get("autoscaling", {})
    if autoscaling.get("enabled"):
        so = one(docs, "ScaledObject", f"{release}-worker")
        assert "replicas" not in worker["spec"]
        assert so["spec"]["minReplicaCount"] == autoscaling.get("minReplicas", so["spec"]["minReplicaCount"])
        assert so["spec"]["maxReplicaCount"] == autoscaling.get("maxReplicas", so["spec"]["maxReplicaCount"])
    elif "replicaCount" in workers:
        assert worker["spec"]["replicas"] == workers["replicaCount"]
    for key, name in (("logLevel", "CPW_LOG_LEVEL"), ("maxConcurrentJobs", "CPW_MAX_CONCURRENT_JOBS")):
        if key in workers:
            assert env[name] == str(workers[key]), name
    for section, component in ((workers, "worker"), (api, "api")):
        rendered = one(docs, "Deployment", f"{release}-{component}")["spec"]["template"]["spec"]["containers"][0]
        for kind, given in section.get("resources", {}).items():
            assert rendered["resources"][kind] == {**rendered["resources"][kind], **given}, (component, kind)
    if "minAvailable" in workers.get("podDisruptionBudget", {}):
        pdb = one(docs, "PodDisruptionBudget", f"{release}-worker")
        assert pdb["spec"]["minAvailable"] == workers["podDisruptionBudget"]["minAvailable"]


@pytest.mark.parametrize("index", range(len(blocks("yaml"))))
def test_values_render_lint_and_do_what_the_seed_says(index: int) -> None:
    values = yaml.safe_load(blocks("yaml")[index])
    assert lint_problems(values) == []
    lands(values, render_values(values, name="core-provider"), "core-provider")


@pytest.mark.parametrize("path", sorted(CI_VALUES.glob("seed-*-values.yaml")), ids=lambda p: p.name)
def test_the_seed_values_files_are_quoted_on_the_page_exactly(path: Path) -> None:
    body = "".join(line for line in path.read_text().splitlines(keepends=True) if not line.startswith("#"))
    assert body in blocks("yaml"), f"{path.name} is not on the page as it is in the file"


# --- shell commands ----------------------------------------------------------------------------------------


def commands(text: str) -> Iterator[tuple[str, list[str]]]:
    """(command, the `# →` lines after it), continuation lines joined, comments dropped."""
    found: list[tuple[str, list[str]]] = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if line.startswith("#"):
            if found and expected(line):
                found[-1][1].extend(expected(line))
            continue
        if line:
            found.append((line, []))
    return iter(found)


def secret_keys(docs: list[dict]) -> dict[str, set[str]]:
    """Secret name -> the keys the release reads from it (volumes, projected volumes, env, KEDA's auth)."""
    refs: dict[str, set[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            secret = node.get("secret")
            if isinstance(secret, dict):
                name = secret.get("secretName") or secret.get("name")
                refs.setdefault(name, set()).update(i["key"] for i in secret.get("items", []))
            ref = node.get("secretKeyRef")
            if isinstance(ref, dict):
                refs.setdefault(ref["name"], set()).add(ref["key"])
            for target in node.get("secretTargetRef", []) if isinstance(node.get("secretTargetRef"), list) else []:
                refs.setdefault(target["name"], set()).add(target["key"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    chart_made = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for doc in docs:
        walk(doc)
    return {name: keys for name, keys in refs.items() if name not in chart_made}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass
class Shell:
    """Runs the guide's commands in order: Secrets first, then the release they are for."""

    platform: Platform
    workdir: Path
    secrets: dict[str, set[str]] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    docs: list[dict] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hosts["core-provider-worker:8001"] = self.platform.worker.ops_url.removeprefix("http://")

    async def run(self, command: str, shows: list[str]) -> None:
        command = re.sub(r"\$(\w+)", lambda m: SHELL[m.group(1)], command)
        line, _, pipe = command.partition(" | ")
        words = shlex.split(line)
        runner = {
            ("kubectl", "create"): self.create_secret,
            ("helm", "install"): self.helm,
            ("helm", "upgrade"): self.helm,
            ("helm", "test"): self.helm_test,
            ("kubectl", "logs"): self.logs,
            ("kubectl", "scale"): self.scale,
            ("kubectl", "port-forward"): self.port_forward,
        }.get((words[0], words[1]))
        if words[0] == "curl":
            await self.curl(words, shows)
        elif runner is None:
            raise AssertionError(f"no runner for {command!r}: add one to tests/docs/test_migrating.py")
        else:
            runner(words[2:], pipe)

    def create_secret(self, args: list[str], _: str) -> None:
        (self.workdir / "tokens.yaml").write_text(json.dumps(TOKENS))
        run = subprocess.run(
            ["kubectl", "create", *args, "--dry-run=client", "-o", "yaml"],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode == 0, run.stderr
        secret = yaml.safe_load(run.stdout)
        self.secrets[secret["metadata"]["name"]] = set(secret["data"])

    def helm(self, args: list[str], _: str) -> None:
        release, chart, rest = args[0], args[1], args[2:]
        assert (ROOT / chart).resolve() == CHART.resolve(), chart
        values = self.values.get(release, {}) if "--reuse-values" in rest else {}
        for flag, value in zip(rest, [*rest[1:], ""], strict=True):
            if flag == "--set":
                values = deep_merge(values, helm_python.parse_set_string(value))
            elif flag in ("-f", "--values"):
                values = deep_merge(values, yaml.safe_load((ROOT / value).read_text()))
        self.values[release] = values
        assert lint_problems(values) == []
        self.docs = render_values(values, name=release)
        lands(values, self.docs, release)
        for name, keys in secret_keys(self.docs).items():
            assert name in self.secrets, f"the release reads Secret {name}, which the guide does not create first"
            assert keys <= self.secrets[name], f"Secret {name} lacks {keys - self.secrets[name]}"

    def helm_test(self, args: list[str], _: str) -> None:
        assert args[0] in self.values, "helm test before helm install"
        tests = [d for d in self.docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
        assert tests, "the release has no helm test"

    def logs(self, args: list[str], pipe: str) -> None:
        kind, _, name = next(a for a in args if "/" in a).partition("/")
        assert kind == "deployment" and one(self.docs, "Deployment", name)
        if pipe:
            grep = shlex.split(pipe)
            assert grep[0] == "grep" and len(grep) == 2, pipe
            formatter = JsonFormatter()
            lines = {
                level: formatter.format(logging.LogRecord("cpw", level, "", 0, "m", None, None)) for level in (40, 20)
            }
            assert grep[1] in lines[40] and grep[1] not in lines[20], (grep[1], lines)

    def scale(self, args: list[str], _: str) -> None:
        assert args[0] == "deployment"
        assert "replicas" in one(self.docs, "Deployment", args[1])["spec"], "KEDA owns the count: scale does nothing"

    def port_forward(self, args: list[str], _: str) -> None:
        kind, _, name = args[0].partition("/")
        local, _, remote = args[1].partition(":")
        service = one(self.docs, "Service", name)
        assert kind == "svc" and int(remote) in [p["port"] for p in service["spec"]["ports"]]
        target = {"core-provider-api": self.platform.api.url}[name]
        self.hosts[f"localhost:{local}"] = target.removeprefix("http://")

    async def curl(self, words: list[str], shows: list[str]) -> None:
        args = [re.sub(r"//([^/]+)", lambda m: "//" + self.hosts[m.group(1)], w) for w in words]
        run = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        for show in shows:
            if show.startswith("{"):
                answer, example = json.loads(run.stdout), json.loads(show)
                assert set(example) <= set(answer), (example, answer)
                for key, value in example.items():
                    if isinstance(value, str):
                        assert answer[key] == value, (key, answer)
                    else:
                        assert isinstance(answer[key], int | float), (key, answer)
            else:  # a metric line: its name and labels, whatever the value
                assert re.search(rf"^{re.escape(show.split(' ')[0])} ", run.stdout, re.M), show


@pytest.mark.rabbitmq
async def test_the_shell_commands_in_order(platform: Platform, tmp_path: Path) -> None:
    shell = Shell(platform, tmp_path)
    ran = 0
    for block in blocks("bash"):
        for command, shows in commands(block):
            await shell.run(command, shows)
            ran += 1
    assert ran >= 15 and {"core-provider-rabbitmq", "core-provider-api-tokens"} <= set(shell.secrets)


# --- PromQL ------------------------------------------------------------------------------------------------


def queries() -> list[str]:
    return [q.strip() for block in blocks("promql") for q in block.splitlines() if q.strip()]


@pytest.mark.parametrize("query", queries())
def test_promql_names_only_what_the_worker_exports(query: str) -> None:
    exported = worker_metrics()
    for selector in selectors(query):
        assert selector.metric in exported, selector.metric
        assert selector.labels <= exported[selector.metric] | SCRAPE_LABELS, selector


@pytest.mark.rabbitmq
async def test_promql_returns_data_from_a_real_prometheus(platform: Platform) -> None:
    if not installed():
        pytest.fail("prometheus is not installed: run `make test` (it installs the Debian package)")
    target = {"targets": [platform.worker.ops_url.removeprefix("http://")], "labels": {"pod": WORKER_ID}}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "cpw-worker", "static_configs": [target]}],
    }
    prometheus = await asyncio.to_thread(PrometheusServer(config).start)
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            for query in queries():
                try:
                    async with asyncio.timeout(30):
                        while not await prometheus.query(http, query):  # rate() needs two scrapes
                            await asyncio.sleep(0.25)
                except TimeoutError:
                    raise AssertionError(f"{query}: no data in 30 s\n{prometheus.tail()}") from None
    finally:
        prometheus.cleanup()


# --- the tables --------------------------------------------------------------------------------------------


def table_cells(column: int) -> list[str]:
    rows = re.findall(r"^\|(.+)\|\s*$", GUIDE.read_text(), re.M)
    cells = [[c.strip() for c in row.split("|")] for row in rows]
    return [row[column] for row in cells if len(row) > column and not set(row[column]) <= {"-", " "}]


def test_every_python_name_here_exists() -> None:
    names = {m for cell in table_cells(1) for m in re.findall(r"^`([A-Z][A-Za-z]+(?:\.[a-z_]+)?)`$", cell)}
    assert len(names) >= 15, names
    for name in sorted(names):
        cls, _, attr = name.partition(".")
        obj = getattr(controlplane_workers, cls)
        assert not attr or hasattr(obj, attr) or attr in getattr(obj, "model_fields", {}), name


def test_every_setting_here_exists_and_the_seed_name_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = re.findall(r"^\| `([A-Z_]+)` \| `(CPW_[A-Z_]+)` \|", GUIDE.read_text(), re.M)
    assert len(rows) == 4, rows
    fields = {alias: name for name, info in Settings.model_fields.items() for alias in _aliases(info)}
    values = {"RABBITMQ_URL": "amqp://u:p@seed:5672/", "WORKER_ID": "worker-1", "LOG_LEVEL": "DEBUG"}
    values["HEALTH_CHECK_PORT"] = "9001"
    for seed, ours in rows:
        assert fields[seed] == fields[ours], (seed, ours)
        monkeypatch.delenv(ours, raising=False)
        monkeypatch.setenv(seed, values[seed])
        assert str(getattr(load_settings(), fields[ours])) == values[seed], seed
        assert ours in (ROOT / "docs" / "configuration.md").read_text()


def _aliases(info: Any) -> list[str]:
    return [a for a in getattr(info.validation_alias, "choices", []) if isinstance(a, str)]


def test_every_chart_key_here_is_a_value_of_the_chart() -> None:
    """Each key is in the (strict) schema of the chart that reads it: the worker's, the API's or the umbrella's."""
    subcharts = {"workers": "worker", "api": "api-adapter"}
    keys = {m for cell in table_cells(1) for m in re.findall(r"^`((?:workers|api|global)\.[A-Za-z.]+)`$", cell)}
    assert len(keys) >= 10, keys
    for key in sorted(keys):
        head, *path = key.split(".")
        chart = CHART / "charts" / subcharts[head] if head in subcharts else CHART
        node = json.loads((chart / "values.schema.json").read_text())
        for part in path if head in subcharts else [head, *path]:
            assert part in node.get("properties", {}), f"{key}: no {part} in {chart.name}'s schema"
            node = node["properties"][part]


def test_the_metric_table_names_exported_metrics() -> None:
    exported = worker_metrics()
    metrics = {m for cell in table_cells(1) for m in re.findall(r"^`(worker_[a-z_]+)`$", cell)}
    assert metrics == {"worker_jobs_processed_total", "worker_jobs_failed_total", "worker_uptime_seconds"}
    assert metrics <= set(exported)


def test_the_seed_deployment_names_are_the_charts() -> None:
    docs = render_values({"workers": {"enabled": True}}, name="core-provider")
    assert find(docs, "Deployment", "core-provider-worker") and find(docs, "Service", "core-provider-worker")
