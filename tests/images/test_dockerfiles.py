"""The image rules, checked on the Dockerfiles themselves (there is no Docker engine here).

Multi-stage, a slim Python base pinned by digest, the project installed as a wheel into a venv, a
numeric non-root USER, an exec-form entrypoint (SIGTERM reaches cpw), PYTHONDONTWRITEBYTECODE,
nothing writable outside /tmp, OCI labels, and a .dockerignore that sends only the wheel's inputs.
What these rules promise at run time is proven by test_readonly_root.py.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.images.dockerfile import DOCKERFILES, ROOT, context_files, parse
from tests.images.runtime import installed_extras

pytestmark = pytest.mark.timeout(30)

ENTRYPOINTS = {"worker": ["cpw", "worker"], "api": ["cpw", "api"]}
PORTS = {"worker": {"8001"}, "api": {"8000", "8001"}}
VALUES = {"worker": "worker", "api": "api-adapter"}
OCI_LABELS = {
    "title",
    "description",
    "source",
    "licenses",
    "version",
    "revision",
    "created",
    "url",
    "documentation",
    "vendor",
    "base.name",
}
DIGEST = re.compile(r"^(?:docker\.io/(?:library/)?)?python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$")


@pytest.fixture(params=sorted(DOCKERFILES), scope="module")
def image(request: pytest.FixtureRequest) -> str:
    return request.param


def test_multi_stage_with_the_runtime_last(image: str) -> None:
    dockerfile = parse(DOCKERFILES[image])
    names = [s.name for s in dockerfile.stages]
    assert names[0] == "build" and names[-1] == "runtime", names
    assert len(names) == len(set(names)), f"stage names repeat: {names}"


def test_every_base_is_slim_python_pinned_by_digest(image: str) -> None:
    dockerfile = parse(DOCKERFILES[image])
    stage_names = {s.name for s in dockerfile.stages}
    for stage in dockerfile.stages:
        base = dockerfile.resolved_base(stage)
        if base in stage_names:
            continue
        assert DIGEST.match(base), f"{DOCKERFILES[image]}: stage {stage.name} FROM {base} is not pinned by digest"


def test_both_images_share_one_base_digest() -> None:
    bases = {name: parse(path).global_args.get("PYTHON_IMAGE") for name, path in DOCKERFILES.items()}
    assert len(set(bases.values())) == 1, bases


def test_the_project_goes_in_as_a_wheel_into_a_venv(image: str) -> None:
    dockerfile = parse(DOCKERFILES[image])
    build = " ".join(i.raw for i in dockerfile.stage("build").all("RUN"))
    assert "pip wheel --no-deps" in build
    assert "venv" in build and "/opt/venv" in build
    assert re.search(r"pip --python /opt/venv/bin/python install [^&]*\.whl", build), build
    runtime = dockerfile.stage("runtime")
    assert not runtime.all("RUN"), "the runtime stage runs nothing: it only receives the venv"
    copies = [i for i in runtime.all("COPY") if i.flags().get("from") == "build"]
    assert [c.args() for c in copies] == [["/opt/venv", "/opt/venv"]], "the runtime copies only the venv"
    assert runtime.env()["PATH"].startswith("/opt/venv/bin:")


def test_runs_as_numeric_non_root_user_10001_as_the_chart_does(image: str) -> None:
    runtime = parse(DOCKERFILES[image]).stage("runtime")
    user = runtime.last("USER")
    assert user is not None and re.fullmatch(r"\d+(:\d+)?", user.raw.strip()), "USER must be numeric"
    uid, _, gid = user.raw.strip().partition(":")
    assert uid == "10001" and gid in ("", "10001")
    values = yaml.safe_load((ROOT / f"charts/controlplane-workers/charts/{VALUES[image]}/values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert runtime.instructions.index(user) > max(runtime.instructions.index(i) for i in runtime.all("COPY")), (
        "USER comes after the files are in place"
    )


def test_exec_form_entrypoint_so_sigterm_reaches_cpw(image: str) -> None:
    runtime = parse(DOCKERFILES[image]).stage("runtime")
    entrypoint = runtime.last("ENTRYPOINT")
    assert entrypoint is not None and entrypoint.exec_form == ENTRYPOINTS[image], entrypoint
    assert not runtime.all("CMD"), "no CMD: the chart passes no args, the entrypoint is the whole command"
    assert not runtime.all("STOPSIGNAL") or runtime.last("STOPSIGNAL").raw.strip() == "SIGTERM"


def test_nothing_written_outside_tmp(image: str) -> None:
    runtime = parse(DOCKERFILES[image]).stage("runtime")
    env = runtime.env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("HOME") == "/tmp" and env.get("TMPDIR") == "/tmp"
    workdir = runtime.last("WORKDIR")
    assert workdir is not None and workdir.raw.strip() == "/tmp"
    assert not runtime.all("VOLUME"), "the chart mounts /tmp; the image declares no volumes"


def test_oci_labels(image: str) -> None:
    labels = parse(DOCKERFILES[image]).stage("runtime").labels()
    missing = {f"org.opencontainers.image.{k}" for k in OCI_LABELS} - set(labels)
    assert not missing, missing
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"


def test_ports_match_the_chart(image: str) -> None:
    runtime = parse(DOCKERFILES[image]).stage("runtime")
    exposed = {p.split("/")[0] for i in runtime.all("EXPOSE") for p in i.args()}
    assert exposed == PORTS[image]


def test_dev_stage_keeps_sync_relaxations_out_of_the_runtime(image: str) -> None:
    dockerfile = parse(DOCKERFILES[image])
    dev, runtime = dockerfile.stage("dev"), dockerfile.stage("runtime")
    assert dev.env().get("PYTHONPATH") == "/tmp/src", "synced sources live in the writable /tmp"
    assert "watchfiles" in " ".join(dev.last("ENTRYPOINT").exec_form or [])
    assert dev.last("USER").raw.strip() == "10001:10001"
    assert "PYTHONPATH" not in runtime.env()


def test_dockerignore_sends_only_the_wheel_inputs() -> None:
    sent = context_files()
    allowed = ("pyproject.toml", "README.md", "worker/controlplane_workers/", "api-adapter/controlplane_api/")
    strays = [f for f in sent if not f.startswith(allowed)]
    assert not strays, f".dockerignore lets in: {strays[:20]}"
    assert not [f for f in sent if "__pycache__" in f or f.endswith((".pyc", ".pyo"))]
    sources = {
        p.relative_to(ROOT).as_posix()
        for d in ("worker/controlplane_workers", "api-adapter/controlplane_api")
        for p in (ROOT / d).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources <= set(sent), sorted(sources - set(sent))[:10]
    assert {"pyproject.toml", "README.md"} <= set(sent)


def test_dockerfiles_copy_only_what_the_context_holds(image: str) -> None:
    sent = context_files()
    for copy in parse(DOCKERFILES[image]).stage("build").all("COPY"):
        if "from" in copy.flags():
            continue
        for source in copy.args()[:-1]:
            assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in sent), (
                f"{DOCKERFILES[image]}:{copy.line}: COPY {source} finds nothing in the build context"
            )


def test_the_api_image_carries_the_postgresql_store_and_the_worker_image_does_not() -> None:
    """The chart runs `cpw indexer` and CPW_API_STORE=postgresql from the API image; workers never talk to it."""
    assert installed_extras("api") == ["otel", "postgresql"]
    assert installed_extras("worker") == ["otel"]
