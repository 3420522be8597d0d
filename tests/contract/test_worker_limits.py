"""What a provider can do to a worker: results within a cap, errors without secrets, threads that hang (16, 17)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import threading
from collections.abc import Iterator

import httpx
import orjson
import pytest

from controlplane_workers import JobStatus, ResourceRequest
from controlplane_workers.context import current_job
from controlplane_workers.dlq import list_dead_letters
from controlplane_workers.logs import JsonFormatter
from controlplane_workers.metrics import REGISTRY
from controlplane_workers.ops import ops_app
from tests.support import providers
from tests.support.harness import client, eventually, request, running_worker

NS, TYPE = "Test.Scripted", "things"
CAP = 1024


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    providers.CALLS.clear()
    providers.STARTED.clear()


@pytest.fixture
def worker_log() -> Iterator[io.StringIO]:
    """The worker's log lines as an operator's log pipeline gets them (JSON, redacted)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("controlplane_workers.worker")
    log.addHandler(handler)
    try:
        yield stream
    finally:
        log.removeHandler(handler)


def _calls(name: str) -> int:
    return sum(1 for c in providers.CALLS if c["name"] == name)


async def test_a_result_at_the_cap_succeeds_and_one_byte_over_fails_without_retry(broker_url):
    async with (
        running_worker(broker_url, providers.registry, max_result_bytes=CAP) as worker,
        client(broker_url) as queue,
    ):
        at_cap = await queue.submit_job(NS, TYPE, "create", request("at-cap", f"size:{CAP}"))
        over = await queue.submit_job(NS, TYPE, "create", request("over", f"size:{CAP + 1}"))
        fits = await queue.get_job_result(at_cap, timeout=10)
        too_large = await queue.get_job_result(over, timeout=10)
        letters = await list_dead_letters(worker.broker)
    assert fits.status is JobStatus.SUCCEEDED and len(orjson.dumps(fits.result)) == CAP
    assert too_large.status is JobStatus.FAILED and too_large.attempts == 1
    assert too_large.result is None and too_large.error.code == "ResultTooLarge"
    assert str(CAP + 1) in too_large.error.message and str(CAP) in too_large.error.message
    assert "xxxx" not in too_large.error.message  # the size, not the content
    assert _calls("over") == 1  # not retried
    assert letters == []  # an ordinary failed outcome, not a poison message


LEAK = (
    "upload to https://acct.blob.core.windows.net/c/b?sv=2024-01-01&sig=SASSECRET%2Bx&se=2030 failed; "
    "retried with Authorization: Bearer eyJTOKENSECRET.abc and AccountKey=KEYSECRET== password=PWSECRET"
)
SECRETS = ("SASSECRET", "TOKENSECRET", "KEYSECRET", "PWSECRET")


async def test_an_unexpected_exception_answers_an_error_id_and_its_detail_goes_only_to_the_log(broker_url, worker_log):
    async with running_worker(broker_url, providers.registry) as worker, client(broker_url) as queue:
        job_id = await queue.submit_job(
            NS, TYPE, "create", request("leaky", "raise:value", message=LEAK), max_attempts=1
        )
        result = await queue.get_job_result(job_id, timeout=10)
        letters = await list_dead_letters(worker.broker)
    assert result.status is JobStatus.FAILED and result.error.code == "ValueError"  # the code is unchanged
    message = result.error.message
    match = re.fullmatch(r"The provider failed unexpectedly \(error id ([0-9a-f]{16})\)\.", message)
    assert match, message
    error_id = match.group(1)
    [letter] = letters
    assert letter["reason"] == "attempts-exhausted" and error_id in letter["detail"]
    assert not any(secret in letter["detail"] for secret in SECRETS)
    # The operator finds the whole story under the same id, with the secrets masked.
    lines = [orjson.loads(line) for line in worker_log.getvalue().splitlines()]
    [entry] = [line for line in lines if line.get("error_id") == error_id]
    assert entry["job_id"] == job_id and entry["error_type"] == "ValueError"
    assert "acct.blob.core.windows.net" in entry["exception"] and "Traceback" in entry["exception"]
    assert not any(secret in worker_log.getvalue() for secret in SECRETS)


async def test_a_deliberate_provider_error_keeps_its_message_with_secrets_masked(broker_url):
    async with running_worker(broker_url, providers.registry) as worker, client(broker_url) as queue:
        plain = await queue.submit_job(NS, TYPE, "create", request("plain", "raise:permanent", message="bad size"))
        secret = await queue.submit_job(NS, TYPE, "create", request("secret", "raise:poison", message=LEAK))
        retried = await queue.submit_job(
            NS, TYPE, "create", request("retried", "raise:retryable", message=LEAK), max_attempts=1
        )
        plain_result = await queue.get_job_result(plain, timeout=10)
        secret_result = await queue.get_job_result(secret, timeout=10)
        retried_result = await queue.get_job_result(retried, timeout=10)
        letters = await list_dead_letters(worker.broker)
    assert plain_result.error.code == "PermanentError" and plain_result.error.message == "bad size"
    for result in (secret_result, retried_result):
        assert result.status is JobStatus.FAILED
        assert "acct.blob.core.windows.net" in result.error.message  # the provider's message, masked
        assert not any(s in result.error.message for s in SECRETS), result.error.message
    assert len(letters) == 2  # the poison and the retried one: a plain PermanentError is no dead letter
    assert not any(s in letter["detail"] for letter in letters for s in SECRETS)


class Blocking:
    """A sync provider whose "hang" jobs block their thread until `release` is set, as a hung SDK call does."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []
        self.job_ids: dict[str, str | None] = {}

    def create_or_update_resource(self, request: ResourceRequest) -> dict[str, str]:
        job = current_job()  # the job's context reaches the pool's thread, as it reached asyncio.to_thread's
        self.calls.append(request.resource_name)
        self.job_ids[request.resource_name] = job.job_id if job else None
        if request.body.get("script") == "hang":
            self.release.wait(60)
        return {"name": request.resource_name}


async def test_hung_sync_calls_make_the_worker_unready_and_good_jobs_wait_in_the_queue(broker_url):
    # As many hung calls as asyncio's default executor has threads, plus one: before the fix every healthy
    # sync job then timed out waiting for a thread and was dead-lettered while the worker said it was ready.
    hung = min(32, (os.cpu_count() or 1) + 4) + 1
    provider = Blocking()
    try:
        async with (
            running_worker(broker_url, provider, max_concurrent_jobs=hung, stuck_restart_after=0.5) as worker,
            client(broker_url) as queue,
        ):
            hung_ids = [
                await queue.submit_job(NS, TYPE, "create", request(f"hung-{i}", "hang"), timeout=0.3, max_attempts=1)
                for i in range(hung)
            ]
            for job_id in hung_ids:
                assert (await queue.get_job_result(job_id, timeout=10)).error.code == "JobTimeout"
            good = await queue.submit_job(NS, TYPE, "create", request("good"), timeout=1.0, max_attempts=1)
            await asyncio.sleep(2.0)  # twice its timeout: it must not have timed out waiting for a thread
            assert queue.get_job_status(good).status is JobStatus.ACCEPTED and "good" not in provider.calls
            # Every thread is held by a call whose job ended: the worker says so instead of saying ready,
            # and once that has lasted CPW_STUCK_RESTART_AFTER, liveness fails so the kubelet restarts it.
            assert worker.sync_pool.stuck == hung and not worker.ready
            assert REGISTRY.get_sample_value("cpw_worker_stuck_threads") == hung
            live = ops_app(is_ready=lambda: worker.ready, status=dict, identity=dict, is_alive=lambda: worker.alive)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=live), base_url="http://ops") as ops:
                await eventually(lambda: not worker.alive, timeout=5)
                assert (await ops.get("/health/live")).status_code == 503

            provider.release.set()  # the hung calls return: their threads are free again
            result = await queue.get_job_result(good, timeout=10)
            letters = await list_dead_letters(worker.broker)
            # The freed threads return one by one: the good job may end on the first before the last is back.
            await eventually(lambda: worker.sync_pool.stuck == 0, timeout=5)
            assert worker.ready and worker.alive
            assert REGISTRY.get_sample_value("cpw_worker_stuck_threads") == 0
    finally:
        provider.release.set()
    assert result.status is JobStatus.SUCCEEDED and result.attempts == 1 and provider.job_ids["good"] == good
    assert sorted(letter["job_id"] for letter in letters) == sorted(hung_ids)  # the good job was never a dead letter
