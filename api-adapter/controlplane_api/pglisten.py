"""The projector's NOTIFY of ended jobs, heard on a connection of its own, for `?wait=` on PostgreSQL.

Should the connection drop (PostgreSQL restarted), it is opened again with backoff, and every waiter
is woken to re-read its row: a notification sent meanwhile was lost. The store re-reads each waited-for
row every second anyway, so a lost NOTIFY delays an answer, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from .pgschema import CHANNEL

log = logging.getLogger("controlplane_api.pgstore")


class EndedJobs:
    """job id -> the futures of the requests waiting for it to end."""

    def __init__(self, dsn: str, errors: tuple[type[BaseException], ...], describe: Callable) -> None:
        self.dsn, self.errors, self.describe = dsn, errors, describe
        self.conn: Any = None
        self.relisten: asyncio.Task[None] | None = None
        self.closing = False
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}

    @property
    def listening(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    async def open(self) -> None:
        self.closing = False
        self.conn = await asyncpg.connect(self.dsn)
        self.conn.add_termination_listener(self._lost)
        await self.conn.add_listener(CHANNEL, self._ended)

    async def close(self) -> None:
        self.closing = True
        if self.relisten is not None:
            self.relisten.cancel()
        if self.conn is not None:
            with contextlib.suppress(*self.errors):
                await self.conn.close()

    def waiter(self, job_id: str) -> asyncio.Future[None]:
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(job_id, []).append(ended)
        return ended

    def forget(self, job_id: str, ended: asyncio.Future[None]) -> None:
        waiters = self.waiters.get(job_id, [])
        if ended in waiters:
            waiters.remove(ended)
        if not waiters:
            self.waiters.pop(job_id, None)

    def _ended(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        for job_id in payload.split(","):
            self._wake(self.waiters.get(job_id, ()))

    @staticmethod
    def _wake(waiters: Any) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _lost(self, _conn: Any) -> None:
        if not self.closing and (self.relisten is None or self.relisten.done()):
            self.relisten = asyncio.ensure_future(self._listen_again())

    async def _listen_again(self, cap: float = 10.0) -> None:
        delay = 0.5
        while not self.closing:
            await asyncio.sleep(delay)
            try:
                await self.open()
            except self.errors as exc:
                log.warning("operation store: cannot listen yet, retrying in %.1fs: %s", delay, self.describe(exc))
                delay = min(cap, delay * 2)
                continue
            log.warning("operation store: listening for ended jobs again")
            for waiters in self.waiters.values():
                self._wake(waiters)
            return
