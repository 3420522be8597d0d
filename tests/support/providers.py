"""Providers for tests, scripted by the request body so separate worker processes behave alike.

`body["script"]`: "ok" | "sleep:<s>" | "fail:<n>" (RetryableError on attempts 1..n) |
"permanent" (PermanentError: Failed, not a dead letter) | "poison" (PermanentError(dead_letter=True)) |
"poison-once:<file>" (a line per call appended to the file, across processes; poison on the first call, ok after) |
"error" (a plain exception every time) | "hang" | "echo" | "size:<n>" (a result whose encoded JSON
is n bytes) | "raise:<value|permanent|poison|retryable>" (that exception with `body["message"]`) |
"crash:<n>" (the worker process dies, `os._exit(137)` as after a segfault or an OOM kill, on the first n runs).
`body["runs"]`, a file path: each run counts itself there, across worker processes (`crash` needs it).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from controlplane_workers import PermanentError, ResourceProviderRegistry, ResourceRequest, RetryableError
from controlplane_workers.context import current_job
from controlplane_workers.examples import demo

CALLS: list[dict[str, Any]] = []
STARTED: dict[str, asyncio.Event] = {}


class Scripted:
    """Records every call; does what the request's script says."""

    async def _do(self, request: ResourceRequest) -> dict[str, Any]:
        job = current_job()
        attempt = job.attempt if job else 1
        CALLS.append(
            {
                "name": request.resource_name,
                "attempt": attempt,
                "at": time.monotonic(),
                "wall": time.time(),
                "pid": os.getpid(),
            }
        )
        STARTED.setdefault(request.resource_name, asyncio.Event()).set()
        script = str(request.body.get("script", "ok"))
        kind, _, arg = script.partition(":")
        runs = _count_run(str(request.body["runs"])) if "runs" in request.body else 0
        if kind == "crash" and runs <= int(arg):
            os._exit(137)
        if kind == "sleep":
            await asyncio.sleep(float(arg))
        elif kind == "fail" and attempt <= int(arg):
            raise RetryableError(f"transient failure on attempt {attempt}", code="Transient")
        elif kind == "permanent":
            raise PermanentError("this request can never succeed", code="InvalidRequest")
        elif kind == "poison":
            raise PermanentError("keep this job for an operator", code="Poison", dead_letter=True)
        elif kind == "poison-once":
            with open(arg, "a+") as calls:
                calls.seek(0)
                first = not calls.read()
                calls.write(f"{os.getpid()}\n")
            if first:
                raise PermanentError("dead-letter me once", code="Poison", dead_letter=True)
        elif kind == "error":
            raise ValueError("provider bug")
        elif kind == "hang":
            await asyncio.sleep(3600)
        elif kind == "size":
            return {"pad": "x" * (int(arg) - len('{"pad":""}'))}
        elif kind == "raise":
            message = str(request.body.get("message", ""))
            if arg == "poison":
                raise PermanentError(message, dead_letter=True)
            raise {"value": ValueError, "permanent": PermanentError, "retryable": RetryableError}[arg](message)
        return {"name": request.resource_name, "attempt": attempt, "pid": os.getpid(), "body": request.body}

    create_or_update_resource = get_resource = delete_resource = list_resources = execute_action = _do


def _count_run(path: str) -> int:
    """This run's number, kept in a file so that it survives the process (and counts every worker's runs)."""
    counter = Path(path)
    runs = int(counter.read_text() or 0) + 1 if counter.exists() else 1
    counter.write_text(str(runs))
    return runs


provider = Scripted()
registry = ResourceProviderRegistry()
registry.register_provider("Test.Scripted", "*", provider)

# For the Azure SDK tests: the scripted provider and the demo's stateful virtual machines, in one worker.
arm_registry = ResourceProviderRegistry()
arm_registry.register_provider("Test.Scripted", "*", provider)
arm_registry.register_provider(demo.NAMESPACE, demo.TYPE, demo.VirtualMachines(delay=0.2))
