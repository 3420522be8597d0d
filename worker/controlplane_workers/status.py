"""The job states as read from the results stream: an index any process can rebuild.

Delivery is at least once, so a job may end twice (a worker died after publishing its result but
before its ack). The first terminal event wins; later ones are ignored and counted.

Every API replica holds the whole retention of the stream, so entries are kept compact: a job in
flight is an `Entry` (slots, interned strings, the result as its encoded JSON), and a finished job,
which no longer changes, is frozen into one bytes object (a packed header, the repeated strings as
numbers into a table of names, then its name, result and error). The index is bounded in bytes as
well as in jobs: over either bound the oldest *finished* jobs are evicted, never one still Accepted
or Running. `nbytes` is an estimate of what the entries cost the process (checked against
tracemalloc in tests/unit/test_status_index.py); readers get a `JobResult` built on each read.
"""

from __future__ import annotations

import asyncio
import math
import struct
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import orjson

from .broker.base import KIND, Headers, StreamMessage
from .models import Job, JobError, JobResult, JobStatus, Operation
from .records import MALFORMED, read_message
from .records import MARKER as MARKER  # where readers of the index import it from

_STARTED = (JobStatus.RUNNING,)
DEFAULT_MAX_JOBS = 1_000_000
MAX_PAGE = 1000  # the most jobs one page holds: JobQueue.list_jobs(limit=...) and the API's GET /jobs?top=
# What a job in flight costs besides its variable parts (tracemalloc, CPython 3.11: the slots object, its
# floats, its slot in the jobs dict and its key, the eviction deque's slot), and what a frozen one costs
# besides the length of its bytes (its 16-byte key, dict slot, deque slot and the bytes object's header:
# ~120 by tracemalloc; 150 sits between that and the RSS the process grows by, allocator slack included).
ENTRY_BYTES = 548  # 540 before the not_before slot
FROZEN_BYTES = 150
_intern = sys.intern
# status, operation (0: none), priority (255: none), attempts, namespace, type, tenant, worker (name
# table numbers + 1; 0: none), submitted, started, finished (NaN: none), then the lengths of the name,
# result, error code and error message (0xFFFFFFFF: none).
_HEAD = struct.Struct("<BBBHIIIIdddIIII")
_NONE = 0xFFFFFFFF
_STATUSES = list(JobStatus)
_STATUS_CODE = {s: i for i, s in enumerate(_STATUSES)}
_OPERATIONS = [None, *Operation]
_OPERATION_CODE = {o: i for i, o in enumerate(_OPERATIONS)}
_NAN = float("nan")
_DELAYED = 0x80  # in the status byte: 8 bytes of not_before follow the head
# What a delayed job in flight costs more: its not_before float object.
DELAYED_BYTES = 24


class Names:
    """The strings that repeat across jobs (namespace, type, tenant, worker id), numbered once."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.numbers: dict[str, int] = {}

    def number(self, name: str | None) -> int:
        if name is None:
            return 0
        found = self.numbers.get(name)
        if found is None:
            self.names.append(_intern(name))
            found = self.numbers[name] = len(self.names)
        return found

    def name(self, number: int) -> str | None:
        return self.names[number - 1] if number else None


def _text(value: str | None) -> bytes:
    return b"" if value is None else value.encode()


class Entry:
    """One job, compact. Strings that repeat across jobs (namespace, type, tenant, worker) are interned."""

    __slots__ = (
        "status",
        "namespace",
        "resource_type",
        "operation",
        "name",
        "tenant",
        "priority",
        "attempts",
        "worker",
        "submitted",
        "started",
        "finished",
        "result",
        "error",
        "nbytes",
        "key",
        "not_before",
    )

    def __init__(self, status: JobStatus) -> None:
        self.status = status
        self.namespace: str | None = None
        self.resource_type: str | None = None
        self.operation: Operation | None = None
        self.name: str | None = None
        self.tenant: str | None = None
        self.priority: int | None = None
        self.attempts = 0
        self.worker: str | None = None
        self.submitted: float | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self.result: bytes | None = None  # the provider's result as encoded JSON
        self.error: JobError | None = None
        self.nbytes = ENTRY_BYTES
        self.key: Key = ""  # the jobs dict's own key object, shared with the eviction deque
        self.not_before: float | None = None  # a delayed job's earliest start (its float only when delayed)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def freeze(self, names: Names) -> bytes:
        """This (finished) job as one bytes object."""
        name, code, message = _text(self.name), b"", b""
        if self.error is not None:
            code, message = self.error.code.encode(), self.error.message.encode()
        result = self.result or b""
        delayed = self.not_before is not None
        head = _HEAD.pack(
            _STATUS_CODE[self.status] | (_DELAYED if delayed else 0),
            _OPERATION_CODE[self.operation],
            255 if self.priority is None else self.priority,
            min(self.attempts, 0xFFFF),
            names.number(self.namespace),
            names.number(self.resource_type),
            names.number(self.tenant),
            names.number(self.worker),
            _NAN if self.submitted is None else self.submitted,
            _NAN if self.started is None else self.started,
            _NAN if self.finished is None else self.finished,
            _NONE if self.name is None else len(name),
            _NONE if self.result is None else len(result),
            _NONE if self.error is None else len(code),
            len(message),
        )
        if delayed:  # 8 bytes, only for a delayed job
            return b"".join((head, _FLOAT.pack(self.not_before), name, result, code, message))
        return b"".join((head, name, result, code, message))

    @classmethod
    def thaw(cls, frozen: bytes, names: Names) -> Entry:
        """The Entry a frozen job was made from."""
        status, op, prio, attempts, ns, rtype, tenant, worker, sub, start, fin, n, r, c, m = _HEAD.unpack_from(frozen)
        entry = cls(_STATUSES[status & ~_DELAYED])
        entry.operation = _OPERATIONS[op]
        entry.priority = None if prio == 255 else prio
        entry.attempts = attempts
        entry.namespace, entry.resource_type = names.name(ns), names.name(rtype)
        entry.tenant, entry.worker = names.name(tenant), names.name(worker)
        entry.submitted = None if math.isnan(sub) else sub
        entry.started = None if math.isnan(start) else start
        entry.finished = None if math.isnan(fin) else fin
        at = _HEAD.size
        if status & _DELAYED:
            entry.not_before, at = _FLOAT.unpack_from(frozen, at)[0], at + _FLOAT.size
        if n != _NONE:
            entry.name, at = frozen[at : at + n].decode(), at + n
        if r != _NONE:
            entry.result, at = frozen[at : at + r], at + r
        if c != _NONE:
            code, at = frozen[at : at + c].decode(), at + c
            entry.error = JobError.model_construct(code=code, message=frozen[at : at + m].decode())
        return entry

    def view(self, job_id: str) -> JobResult:
        return JobResult.model_construct(
            job_id=job_id,
            status=self.status,
            provider_namespace=self.namespace,
            resource_type=self.resource_type,
            operation=self.operation,
            resource_name=self.name,
            tenant=self.tenant,
            priority=self.priority,
            result=None if self.result is None else orjson.loads(self.result),
            error=self.error,
            attempts=self.attempts,
            worker_id=self.worker,
            submitted_at=self.submitted,
            started_at=self.started,
            finished_at=self.finished,
            not_before=self.not_before,
        )


class JobPage(NamedTuple):
    """One page of jobs, newest first. `after`: pass it as `after=` for the next page; None on the last page."""

    jobs: list[JobResult]
    after: str | None


def page_limit(limit: int) -> int:
    """`limit` if it is a page size this project serves (1 to MAX_PAGE), else ValueError saying so."""
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE}, not {limit!r}")
    return limit


def status_of(value: JobStatus | str | None) -> JobStatus | None:
    """A status filter: a JobStatus, its name ("Succeeded"), or None for every status."""
    if value is None or isinstance(value, JobStatus):
        return value
    try:
        return JobStatus(value)
    except ValueError:
        names = ", ".join(s.value for s in JobStatus)
        raise ValueError(f"status must be one of {names}, not {value!r}") from None


Key = str | bytes  # a job id as the index keys it: 16 bytes for the 32-hex ids this project makes


def _key(job_id: str) -> Key:
    """The compact key of a job id: bytes for a lowercase 32-hex id (49 bytes instead of 81), else the id."""
    if len(job_id) == 32:
        try:
            raw = bytes.fromhex(job_id)
        except ValueError:
            return job_id
        if raw.hex() == job_id:
            return raw
    return job_id


def _job_id(key: Key) -> str:
    return key.hex() if type(key) is bytes else key  # type: ignore[union-attr,return-value]


def _name(value: str | None) -> str | None:
    return None if value is None else _intern(value)


_TENANT_AT, _SUBMITTED_AT = 13, 21  # offsets in _HEAD: read without unpacking a whole job
_NUMBER, _FLOAT = struct.Struct("<I"), struct.Struct("<d")
Item = Entry | bytes  # what the jobs dict holds: a job in flight, or a finished one frozen


class StatusIndex:
    """job id -> job, bounded by `max_jobs` and `max_bytes`: the oldest finished jobs are evicted first."""

    def __init__(
        self, max_jobs: int = DEFAULT_MAX_JOBS, max_bytes: int | None = None, max_age: float | None = None
    ) -> None:
        """`max_age`: finished jobs submitted longer ago are dropped (the stream's retention): they
        answer OperationExpired anyway, and an eviction then always means a bound was too small."""
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.expired = 0
        self.jobs: dict[Key, Item] = {}  # in arrival order; eviction goes by `finished`
        self.finished: deque[Key] = deque()  # keys in the order their jobs finished: the eviction order
        self.names = Names()
        self.waiters: dict[str, list[asyncio.Future[JobResult]]] = {}
        self.nbytes = 0
        self.duplicates = 0
        self.evicted = 0
        self.malformed = 0
        self.redriven = 0
        self.events = 0
        self.last_offset = -1
        self.last_event_at: float | None = None
        # The submission time of the newest evicted job: an unknown id made before it was evicted.
        self.evicted_before: float | None = None

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[str]:
        """The job ids held, oldest first."""
        return map(_job_id, list(self.jobs))

    def __contains__(self, job_id: str) -> bool:
        return _key(job_id) in self.jobs

    def _entry(self, item: Item) -> Entry:
        return item if type(item) is Entry else Entry.thaw(item, self.names)  # type: ignore[arg-type]

    def _tenant_of(self, item: Item) -> str | None:
        if type(item) is Entry:
            return item.tenant
        return self.names.name(_NUMBER.unpack_from(item, _TENANT_AT)[0])  # type: ignore[arg-type]

    def _status_of(self, item: Item) -> JobStatus:
        return item.status if type(item) is Entry else _STATUSES[item[0] & ~_DELAYED]  # type: ignore[union-attr,index]

    @staticmethod
    def _cost(item: Item) -> int:
        return item.nbytes if type(item) is Entry else FROZEN_BYTES + len(item)  # type: ignore[union-attr,arg-type]

    def get(self, job_id: str) -> JobResult | None:
        item = self.jobs.get(_key(job_id))
        return None if item is None else self._entry(item).view(job_id)

    def get_for(self, job_id: str, tenant: str | None) -> JobResult | None:
        """The job if `tenant` may see it: None (no tenants) sees every job, a tenant its own only."""
        item = self.jobs.get(_key(job_id))
        if item is None or (tenant is not None and self._tenant_of(item) != tenant):
            return None
        return self._entry(item).view(job_id)

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        tenant: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> JobPage:
        """Jobs `tenant` may see (None: every job), optionally in one `status`, newest (by arrival) first,
        at most `limit`; `after` (the previous page's `JobPage.after`) continues right after that job.

        The page goes on from `after` by its place, whatever its status is now (a job that ended since
        the last page does not end the listing). Only the tenant's own job starts a page: an id of
        another tenant's job, or one not held (never seen, evicted), starts from the top, so the answer
        tells nothing of that job. The ids are compared, never thawed: skipping costs no decoding."""
        page_limit(limit)
        wanted = status_of(status)
        items = reversed(self.jobs.items())
        start = None if after is None else _key(after)
        held = None if start is None else self.jobs.get(start)
        if held is not None and (tenant is None or self._tenant_of(held) == tenant):
            for key, _ in items:
                if key == start:
                    break
        jobs: list[JobResult] = []
        for key, item in items:
            if tenant is not None and self._tenant_of(item) != tenant:
                continue
            if wanted is not None and self._status_of(item) is not wanted:
                continue
            if len(jobs) == limit:
                return JobPage(jobs, jobs[-1].job_id)
            jobs.append(self._entry(item).view(_job_id(key)))
        return JobPage(jobs, None)

    def counts(self, tenant: str | None = None) -> dict[str, int]:
        """Jobs `tenant` may see, by status."""
        counts = {s.value: 0 for s in JobStatus}
        for item in self.jobs.values():
            if tenant is None or self._tenant_of(item) == tenant:
                counts[self._status_of(item).value] += 1
        return counts

    def _count(self, entry: Entry, delta: int) -> None:
        """Hook: a job in flight entered (+1) or left (-1) this index (it ended, or changed tenant).

        A subclass that counts jobs in flight (the API's per-tenant cap) overrides it. Finished
        (frozen) jobs never reach it."""

    def apply_batch(self, messages: Sequence[StreamMessage]) -> None:
        apply = self.apply
        for message in messages:
            apply(message)

    def apply(self, message: StreamMessage) -> None:
        self.events += 1
        self.last_offset = message.offset
        try:
            held = read_message(message, self)
            self.events += held - 1  # count events, not stream messages
        except MALFORMED:
            self.malformed += 1
            held = -1
        self._evict()  # once per stream message: a bound is exceeded by one batch at most, briefly
        if held == 0 and message.headers.get(KIND) == MARKER:  # 0: a marker, or an empty batch
            self.read_marker(message.headers)

    def read_marker(self, headers: Headers) -> None:
        """Hook: a reader's position marker was read (the API is ready once it reads its own)."""

    def _evicted_one(self) -> None:
        """Hook: a finished job was evicted to stay within a bound (the API counts it in a metric)."""

    def remember_key(self, key: str, job_id: str, fingerprint: str, at: float) -> None:
        """Hook: an Accepted record carried an idempotency key (events.accepted_record). The API keeps
        them, so every replica can answer a retried submission with the job the first one made."""

    def accept(self, job: Job) -> None:
        """Record a job its submitter just published (its stream record, arriving later, changes nothing)."""
        self.record_accepted(
            job.id,
            job.provider_namespace,
            job.resource_type,
            job.operation,
            job.request.resource_name,
            job.tenant,
            job.priority,
            job.submitted_at,
            not_before=job.not_before,
        )
        self._evict()

    def record_accepted(
        self,
        job_id: str,
        namespace: str,
        resource_type: str,
        operation: Operation,
        resource_name: str | None,
        tenant: str | None,
        priority: int,
        submitted_at: float | None,
        *,
        redrive: bool = False,
        not_before: float | None = None,
    ) -> None:
        key = _key(job_id)
        item = self.jobs.get(key)
        if item is not None and redrive:  # an operator sent a dead-lettered job round again
            self.redriven += 1
            self._remove(key, item)
            item = None
        if item is None:
            current = Entry(JobStatus.ACCEPTED)
            current.tenant = _name(tenant)
            self._insert(job_id, key, current)
        elif type(item) is Entry:
            current = item
            self._adopt_tenant(current, tenant)  # an event came before the job
        else:  # the job ended before its record came: fill in what its events did not say
            current = Entry.thaw(item, self.names)  # type: ignore[arg-type]
            current.tenant = current.tenant or _name(tenant)
        current.namespace = _intern(namespace)
        current.submitted = submitted_at
        current.resource_type = current.resource_type or _intern(resource_type)
        current.operation = current.operation or operation
        if current.name is None and resource_name is not None:
            current.name = resource_name
            if current is item:
                self._grow(current, len(resource_name))
        current.priority = priority if current.priority is None else current.priority
        if not_before is not None and current.not_before is None:
            current.not_before = not_before
            if current is item or item is None:
                self._grow(current, DELAYED_BYTES)
        if current is not item and item is not None:
            self._freeze(key, current)

    def record_event(
        self,
        job_id: str,
        status: JobStatus,
        at: float,
        attempt: int,
        worker_id: str | None,
        result: Any,
        error: JobError | None,
        tenant: str | None = None,
    ) -> None:
        self.last_event_at = at
        key = _key(job_id)
        item = self.jobs.get(key)
        if item is None:
            entry = Entry(JobStatus.ACCEPTED)
            self._insert(job_id, key, entry)
        elif type(item) is not Entry:  # it has ended: the first terminal event won
            if status.terminal:
                self.duplicates += 1
            if tenant is not None and self._tenant_of(item) is None:
                ended = Entry.thaw(item, self.names)  # type: ignore[arg-type]
                ended.tenant = _intern(tenant)
                self._freeze(key, ended)
            return
        else:
            entry = item
        self._adopt_tenant(entry, tenant)  # its Accepted record may never come (models.JobEvent)
        entry.attempts = max(entry.attempts, attempt)
        if worker_id is not None:
            entry.worker = _intern(worker_id)
        if status in _STARTED and entry.started is None:
            entry.started = at
        if status.terminal:
            self._count(entry, -1)
        entry.status = status
        if error is not None:
            entry.error = error
            self._grow(entry, len(error.message) + len(error.code))
        if not status.terminal:
            return
        entry.finished = at
        entry.started = entry.started or at
        if result is not None:
            entry.result = orjson.dumps(result)
        self.finished.append(entry.key)  # the dict's own key object: no second copy of the id
        self._freeze(key, entry)
        waiters = self.waiters.pop(job_id, None)
        if waiters:
            record = entry.view(job_id)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(record)

    def _freeze(self, key: Key, entry: Entry) -> None:
        """Store a finished job as bytes, in place of what the dict held for it (the dict keeps its key)."""
        frozen = entry.freeze(self.names)
        self.nbytes += FROZEN_BYTES + len(frozen) - self._cost(self.jobs[key])
        self.jobs[key] = frozen

    def _adopt_tenant(self, entry: Entry, tenant: str | None) -> None:
        """Give a job learned of without its tenant the tenant a later record names."""
        if entry.tenant is None and tenant is not None:
            self._count(entry, -1)
            entry.tenant = _intern(tenant)
            self._count(entry, 1)

    def _grow(self, entry: Entry, nbytes: int) -> None:
        entry.nbytes += nbytes
        self.nbytes += nbytes

    def _insert(self, job_id: str, key: Key, entry: Entry) -> None:
        """Add a job the index did not hold; `key` is `_key(job_id)`, which the caller looked it up by
        (computed once per record: the hex round trip is on the hot path of a replay)."""
        entry.key = key
        self.jobs[entry.key] = entry
        self.nbytes += entry.nbytes
        self._count(entry, 1)

    def _remove(self, key: Key, item: Item) -> None:
        del self.jobs[key]
        self.nbytes -= self._cost(item)
        if type(item) is Entry:
            self._count(item, -1)

    def over_bound(self) -> bool:
        return len(self.jobs) > self.max_jobs or (self.max_bytes is not None and self.nbytes > self.max_bytes)

    def _evict(self) -> None:
        """The oldest finished jobs go while a bound is exceeded; a job in flight is never evicted."""
        finished = self.finished
        if self.max_age is not None and finished:
            self._expire(time.time() - self.max_age)
        while finished and self.over_bound():
            key = finished.popleft()
            item = self.jobs.get(key)
            if item is None or type(item) is Entry:  # redriven or removed since it finished
                continue
            self._remove(key, item)
            self.evicted += 1
            self._evicted_one()
            submitted = _FLOAT.unpack_from(item, _SUBMITTED_AT)[0]  # type: ignore[arg-type]
            if not math.isnan(submitted):
                self.evicted_before = max(self.evicted_before or 0.0, submitted)

    def _expire(self, cutoff: float) -> None:
        finished, jobs = self.finished, self.jobs
        while finished:
            item = jobs.get(finished[0])
            if item is not None and type(item) is not Entry:
                submitted = _FLOAT.unpack_from(item, _SUBMITTED_AT)[0]  # type: ignore[arg-type]
                if math.isnan(submitted) or submitted >= cutoff:
                    return
                self._remove(finished[0], item)
                self.expired += 1
                self.evicted_before = max(self.evicted_before or 0.0, submitted)
            finished.popleft()

    async def wait(self, job_id: str, timeout: float | None) -> JobResult | None:
        """The job's terminal state, or None when it is not terminal within `timeout` seconds."""
        item = self.jobs.get(_key(job_id))
        if item is not None and type(item) is not Entry:
            return self._entry(item).view(job_id)
        future: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(job_id, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self.waiters.get(job_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self.waiters[job_id]
