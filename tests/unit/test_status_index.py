"""The status index stays within its bounds, evicts the oldest finished jobs first, and its byte
accounting matches what the entries really cost (tracemalloc)."""

from __future__ import annotations

import gc
import time
import tracemalloc

import orjson
import pytest

from controlplane_api.memory import BASELINE_BYTES, cgroup_memory_limit, index_budget, index_max_bytes
from controlplane_api.settings import load_api_settings
from controlplane_api.store import IndexStore
from controlplane_workers.broker.base import KIND, StreamMessage
from controlplane_workers.events import BATCH
from controlplane_workers.ids import new_job_id
from controlplane_workers.models import JobStatus
from controlplane_workers.status import StatusIndex
from tests.chart.chartlib import env_of, one, render_set

pytestmark = pytest.mark.timeout(60)


def accepted(job_id: str, name: str = "vm1") -> dict:
    job = {
        "id": job_id,
        "provider_namespace": "Demo.Compute",
        "resource_type": "virtualMachines",
        "operation": "create",
        "request": {"resource_name": name},
        "tenant": "tenant-a",
        "priority": 5,
        "submitted_at": time.time(),
    }
    return {"job": job, "at": time.time()}


def ended(job_id: str, result: object = None, kind: str = "succeeded") -> dict:
    return {"job_id": job_id, "type": kind, "at": time.time(), "worker_id": "w1", "result": result}


def batch(events: list[dict], offset: int = 0) -> StreamMessage:
    return StreamMessage(body=orjson.dumps(events), headers={KIND: BATCH}, offset=offset)


def finish_jobs(index: StatusIndex, count: int, result: object = None) -> list[str]:
    ids = [new_job_id() for _ in range(count)]
    for start in range(0, count, 100):
        chunk = ids[start : start + 100]
        index.apply(batch([e for i in chunk for e in (accepted(i, f"vm-{i[-8:]}"), ended(i, result))], start))
    return ids


def test_the_oldest_finished_jobs_are_evicted_first_and_a_running_job_never():
    index = StatusIndex(max_jobs=5)
    running = new_job_id()
    index.apply(batch([accepted(running), {"job_id": running, "type": "running", "at": time.time()}]))
    done = finish_jobs(index, 6)
    # 7 jobs > 5: the two that finished first went; the running one, older than all, stays.
    assert running in index and index.get(running).status is JobStatus.RUNNING
    assert [i in index for i in done] == [False, False, True, True, True, True]
    assert index.evicted == 2 and len(index) == 5


def test_over_the_byte_bound_finished_jobs_go_and_the_bound_holds():
    result = {"id": "/subscriptions/s/resourceGroups/rg/providers/Demo.Compute/virtualMachines/vm", "x": "y" * 150}
    index = StatusIndex(max_bytes=200_000)
    ids = finish_jobs(index, 2_000, result)
    assert index.nbytes <= 200_000
    assert 300 < len(index) < 600 and index.evicted == 2_000 - len(index)
    assert ids[-1] in index and ids[0] not in index  # the newest stay


def test_jobs_in_flight_stay_even_over_the_byte_bound():
    index = StatusIndex(max_bytes=1_000_000)
    ids = [new_job_id() for _ in range(3_000)]
    index.apply(batch([accepted(i) for i in ids]))
    assert len(index) == 3_000 and index.nbytes > 1_000_000 and index.evicted == 0
    index.apply(batch([ended(i) for i in ids[:10]]))  # they finish: the first to finish go first
    assert all(i not in index for i in ids[:10]) and index.evicted == 10


async def test_an_evicted_job_answers_operation_expired():
    store = IndexStore(max_jobs=100, retention=86_400)
    ids = finish_jobs(store.index, 150)
    assert await store.get(ids[0], None) is None and store.miss_code(ids[0]) == "OperationExpired"
    assert await store.get(ids[-1], None) is not None
    assert store.miss_code(new_job_id(time.time() + 1)) == "OperationNotFound"  # made after every evicted job


@pytest.mark.parametrize("result_size", [0, 200, 4_000])
def test_the_byte_accounting_is_within_20_percent_of_what_tracemalloc_measures(result_size):
    result = None if result_size == 0 else {"id": "/subscriptions/s/x", "properties": {"blob": "z" * result_size}}
    index = StatusIndex(max_jobs=100_000)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        finish_jobs(index, 20_000, result)
        gc.collect()
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_job, accounted = measured / 20_000, index.nbytes / 20_000
    print(f"result={result_size}B measured={per_job:.0f} B/job accounted={accounted:.0f} B/job")
    assert abs(accounted - per_job) <= 0.2 * per_job


def test_a_small_finished_job_costs_under_600_bytes():
    """The benchmark's case (a ~215-byte result); it cost ~2,500 bytes as a pydantic model per job."""
    result = {"id": "/subscriptions/demo/resourceGroups/rg1/providers/Demo.Compute/virtualMachines/vm1",
              "name": "vm1", "type": "Demo.Compute/virtualMachines",
              "properties": {"vmSize": "Standard_D2s_v5", "provisioningState": "Succeeded"}}  # fmt: skip
    index = StatusIndex()
    finish_jobs(index, 5_000, result)
    assert index.nbytes / 5_000 < 600


@pytest.mark.parametrize(
    ("v2", "v1", "limit"),
    [("268435456\n", None, 268435456), ("max\n", None, None), (None, "9223372036854771712\n", None),
     (None, "536870912\n", 536870912), (None, None, None), ("²\n", None, None)],
)  # fmt: skip
def test_the_cgroup_memory_limit_is_read_from_v2_then_v1(tmp_path, v2, v1, limit):
    paths = (tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes")
    for path, text in zip(paths, (v2, v1)):
        if text is not None:
            path.write_text(text)
    assert cgroup_memory_limit(paths) == limit


def test_the_bound_comes_from_the_setting_else_the_memory_limit():
    mib = 1024 * 1024
    assert index_budget(None) is None
    assert index_budget(256 * mib) == (256 * mib - BASELINE_BYTES) // 2
    assert index_budget(64 * mib) == 8 * mib  # a floor, not a negative bound
    assert index_max_bytes(load_api_settings(api_memory_limit_bytes=1024 * mib)) == (1024 * mib - BASELINE_BYTES) // 2
    assert index_max_bytes(load_api_settings(api_index_max_bytes=5_000_000, api_memory_limit_bytes=1024 * mib)) == (
        5_000_000
    )


def test_the_chart_gives_the_api_its_memory_limit_through_the_downward_api():
    api = one(render_set("default"), "Deployment", "cpw-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["CPW_API_MEMORY_LIMIT_BYTES"] == {
        "resourceFieldRef": {"containerName": container["name"], "resource": "limits.memory"}
    }


def test_finished_jobs_older_than_the_retention_expire_without_counting_as_evictions():
    index = StatusIndex(max_age=3600)
    old = new_job_id()
    stale = accepted(old)
    stale["job"]["submitted_at"] = time.time() - 7200
    index.apply(batch([stale, ended(old)]))
    fresh = finish_jobs(index, 3)
    assert old not in index and all(i in index for i in fresh)
    assert (index.expired, index.evicted) == (1, 0)


def test_a_frozen_job_reads_back_as_it_was_and_late_records_still_fill_it_in():
    index = StatusIndex()
    job_id = new_job_id()
    # its events come before its Accepted record (the submitter's record was late), without a tenant
    index.apply(batch([{"job_id": job_id, "type": "running", "at": 1.0, "attempt": 2, "worker_id": "w9"}]))
    error = {"code": "Conflict", "message": "säme name ✓"}
    index.apply(batch([{"job_id": job_id, "type": "failed", "at": 2.5, "attempt": 2, "error": error}]))
    index.apply(batch([{**accepted(job_id, "vm-ü"), "job": {**accepted(job_id, "vm-ü")["job"], "priority": 9}}]))
    index.apply(batch([ended(job_id, {"late": True})]))  # a duplicate terminal event: ignored, counted
    record = index.get_for(job_id, "tenant-a")
    assert record is not None and index.get_for(job_id, "tenant-b") is None
    assert (record.status, record.attempts, record.worker_id, record.priority) == (JobStatus.FAILED, 2, "w9", 9)
    assert (record.started_at, record.finished_at, record.resource_name) == (1.0, 2.5, "vm-ü")
    assert record.error is not None and (record.error.code, record.error.message) == ("Conflict", "säme name ✓")
    assert record.result is None and record.operation is not None and record.operation.value == "create"
    assert index.duplicates == 1 and index.counts("tenant-a")["Failed"] == 1
    assert [r.job_id for r in index.list_jobs(tenant="tenant-a", status=JobStatus.FAILED).jobs] == [job_id]


RSS_PROBE = """
import gc, sys, time
sys.path[:0] = {paths!r}
from tests.unit.test_status_index import finish_jobs
from controlplane_workers.status import StatusIndex

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

result = {{"id": "/subscriptions/demo/resourceGroups/rg1/providers/Demo.Compute/virtualMachines/vm1",
          "properties": {{"vmSize": "Standard_D2s_v5", "provisioningState": "Succeeded"}}}}
index = StatusIndex()
finish_jobs(index, 2_000, result)  # warm the allocator and the code paths
gc.collect()
before, held = rss(), index.nbytes
finish_jobs(index, 100_000, result)
gc.collect()
print(rss() - before, index.nbytes - held)
"""


def test_the_byte_accounting_is_within_20_percent_of_the_rss_the_process_grows_by():
    """What the bound protects is the pod's memory: the estimate must hold against RSS, allocator included."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    paths = [str(root), str(root / "worker"), str(root / "api-adapter")]
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE.format(paths=paths)], capture_output=True, text=True, timeout=50, check=True
    ).stdout
    grown, accounted = (int(n) for n in out.split())
    print(f"100,000 finished jobs: RSS grew {grown / 1e5:.0f} B/job, accounted {accounted / 1e5:.0f} B/job")
    assert abs(accounted - grown) <= 0.2 * grown


def test_a_delayed_job_keeps_its_start_time_in_flight_and_frozen_for_8_bytes_more():
    index, plain = StatusIndex(), StatusIndex()
    job_id, other = new_job_id(), new_job_id()
    delayed = accepted(job_id)
    delayed["job"]["not_before"] = 1_900_000_000.25
    index.apply(batch([delayed]))
    plain.apply(batch([accepted(other)]))
    assert index.get(job_id).not_before == 1_900_000_000.25 and plain.get(other).not_before is None
    assert index.nbytes - plain.nbytes == 24  # the float, only for a delayed job
    index.apply(batch([ended(job_id)]))
    plain.apply(batch([ended(other)]))
    record = index.get(job_id)
    assert (record.status, record.not_before) == (JobStatus.SUCCEEDED, 1_900_000_000.25)
    assert plain.get(other).not_before is None
    assert index.nbytes - plain.nbytes == 8  # frozen: 8 bytes after the head, flagged in the status byte
    assert index.counts()["Succeeded"] == 1
    assert [r.job_id for r in index.list_jobs(status=JobStatus.SUCCEEDED).jobs] == [job_id]
