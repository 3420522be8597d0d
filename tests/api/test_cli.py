"""`cpw jobs submit | get | cancel | list` against a running API (token from the environment)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from tests.api.support import ROOT, start_api

pytestmark = pytest.mark.rabbitmq


async def cpw(api, *args: str, token: str = "token-a", token_file=None) -> tuple[int, dict | None, str]:
    # this tree's code, whatever checkout the venv's editable install points at (as support._env)
    paths = os.pathsep.join(str(p) for p in (ROOT, ROOT / "worker", ROOT / "api-adapter"))
    env = {**os.environ, "CPW_API_URL": api.url, "PYTHONPATH": paths}
    if token_file is not None:  # as the chart's helm test pod mounts it
        env["CPW_API_TOKEN_FILE"] = str(token_file)
    else:
        env["CPW_API_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controlplane_workers.cli",
        "jobs",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode, (json.loads(out) if out.strip() else None), err.decode()


async def test_cpw_jobs_submit_get_list_cancel(vhost_url, tmp_path, worker):
    api = await start_api(vhost_url, tmp_path)
    try:
        code, job, _ = await cpw(
            api,
            "submit",
            "Test.Scripted",
            "things",
            "create",
            "--name",
            "c1",
            "--body",
            '{"script": "ok"}',
            "--priority",
            "9",
            "--wait",
            "10",
        )
        assert code == 0 and job["status"] == "Succeeded" and job["priority"] == 9
        code, shown, _ = await cpw(api, "get", job["id"])
        assert code == 0 and shown["id"] == job["id"] and shown["result"]["name"] == "c1"
        code, hung, _ = await cpw(
            api,
            "submit",
            "Test.Scripted",
            "things",
            "action",
            "--name",
            "h",
            "--action",
            "go",
            "--body",
            '{"script": "hang"}',
        )
        assert code == 0 and hung["status"] in ("Accepted", "Running")
        code, canceled, _ = await cpw(api, "cancel", hung["id"], "--wait", "10")
        assert code == 0 and canceled["status"] == "Canceled"
        code, _, err = await cpw(api, "cancel", hung["id"])
        assert code == 1 and "409 Conflict" in err
        code, page, _ = await cpw(api, "list", "--all", "--top", "1")
        assert code == 0 and {j["id"] for j in page["value"]} == {job["id"], hung["id"]}
        code, page, _ = await cpw(api, "list", "--status", "Canceled")
        assert [j["id"] for j in page["value"]] == [hung["id"]]
        code, _, err = await cpw(api, "get", job["id"], token="token-b")
        assert code == 1 and "404" in err
        code, _, err = await cpw(api, "list", token="wrong")
        assert code == 1 and "401" in err
    finally:
        api.stop()


async def test_cpw_jobs_reads_the_token_from_a_mounted_file(vhost_url, tmp_path, worker):
    api = await start_api(vhost_url, tmp_path)
    try:
        good, bad = tmp_path / "good", tmp_path / "bad"
        good.write_text("token-a\n")
        bad.write_text("nope\n")
        code, job, err = await cpw(
            api,
            "submit",
            "Test.Scripted",
            "things",
            "create",
            "--name",
            "f1",
            "--body",
            '{"script": "ok"}',
            "--wait",
            "10",
            token_file=good,
        )
        assert code == 0 and job["status"] == "Succeeded", err
        code, _, err = await cpw(api, "list", token_file=bad)
        assert code == 1 and "401" in err
        code, _, err = await cpw(api, "list", token_file=tmp_path / "missing")
        assert code != 0 and "CPW_API_TOKEN_FILE: cannot read" in err
    finally:
        api.stop()
