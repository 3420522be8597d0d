"""The README's first screen works: `make run` (= `cpw dev`) serves the API, and both the curl commands in
the README and the ones `cpw dev` prints reach Succeeded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import cpw_executable
from tests.support.rabbitmq import free_port

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FIRST_LINES = """# controlplane-workers

```bash
make run    # the local platform on the embedded broker: API on 127.0.0.1:8000, a worker, a demo provider
make test   # every test: real RabbitMQ, real uvicorn, the real Helm engine, promtool
```
"""


def test_readme_starts_with_make_run_and_make_test() -> None:
    assert README.read_text().startswith(FIRST_LINES)


def test_make_run_is_cpw_dev() -> None:
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:.*\n\t\$\(CPW\) dev\s*$", make, re.M)


@pytest.fixture
def cpw_dev(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to run the README's commands")
    port = free_port()
    log = tmp_path / "dev.log"
    env = {**os.environ, "CPW_HEALTH_PORT": str(free_port())}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [cpw_executable(), "dev", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 30
        while "curl" not in log.read_text() or not _answers(port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port, log
    finally:
        process.terminate()
        assert process.wait(30) == 0, log.read_text()


def _answers(port: int) -> bool:
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/health/ready"],
        capture_output=True,
        text=True,
    )
    return result.stdout == "200"


def _commands(text: str) -> list[str]:
    """curl commands, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


def _run(command: str, port: int) -> str:
    command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _poll(command: str, port: int) -> dict:
    deadline = time.monotonic() + 30
    while True:
        status = json.loads(_run(command, port))
        if status["status"] in ("Succeeded", "Failed", "Canceled") or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_readme_curl_commands_reach_succeeded(cpw_dev: tuple[int, Path]) -> None:
    port, _ = cpw_dev
    section = README.read_text().split("## What you will see", 1)[1].split("\n## ", 1)[0]
    create, poll, get = _commands(section)
    answer = json.loads(_run(create, port))
    assert answer["properties"]["provisioningState"] == "Accepted"
    status = _poll(poll.replace("<jobId>", answer["jobId"]), port)
    assert status["status"] == "Succeeded", status
    assert status["properties"]["output"]["properties"]["provisioningState"] == "Succeeded"
    resource = json.loads(_run(get, port))  # a GET answers the resource itself, synchronously
    assert resource == status["properties"]["output"], resource


def test_the_printed_curl_example_reaches_succeeded(cpw_dev: tuple[int, Path]) -> None:
    port, log = cpw_dev
    printed = _commands(log.read_text())
    assert len(printed) == 3 and all(f"127.0.0.1:{port}" in c for c in printed), printed
    create, poll, wait = printed
    answer = _run(create, port)  # curl -si: headers, then the body
    assert answer.startswith("HTTP/1.1 201"), answer
    job_id = json.loads(answer.split("\n\n", 1)[1])["jobId"]
    assert f"/operations/{job_id}" in answer  # Azure-AsyncOperation
    status = _poll(re.sub(r"<jobId[^>]*>", job_id, poll), port)
    assert status["status"] == "Succeeded", status
    final = json.loads(_run(wait, port))
    assert final["properties"]["provisioningState"] == "Succeeded", final
