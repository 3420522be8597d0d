"""SyncPool: the threads a worker runs sync provider methods in, bounded and accounted.

A thread cannot be interrupted: a sync call whose job timed out (or was canceled) keeps its thread until
the call returns, perhaps never. With asyncio's shared default executor, enough hung calls took every
thread, and each healthy sync job then waited for a thread until it timed out and was dead-lettered while
the worker said it was ready (issue 17). Here each abandoned call still running is counted as a *stuck*
thread; when every thread is stuck the worker turns unready and hands sync jobs back to the queue.

Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one hung call would keep a
SIGTERMed worker from ever exiting. These threads are daemons, started as calls need them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_Item = tuple[Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...]]


class SyncPool:
    """At most `size` threads; `run` awaits one call, `stuck` counts abandoned calls still running."""

    def __init__(self, size: int, name: str = "cpw-sync", on_change: Callable[[int], None] | None = None) -> None:
        self.size = size
        self.name = name
        self._on_change = on_change
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._stuck: set[Future[Any]] = set()

    @property
    def stuck(self) -> int:
        return len(self._stuck)

    @property
    def exhausted(self) -> bool:
        """Every thread holds an abandoned call: a new sync job could only wait here until it times out."""
        return len(self._stuck) >= self.size

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` in a pool thread with the caller's context (current_job() works there)."""
        future: Future[Any] = Future()
        self._submit((future, contextvars.copy_context(), fn, args))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # wrap_future cancelled `future`: a call not started yet never runs; a running one keeps its thread.
            if not future.done():
                self._abandon(future, asyncio.get_running_loop())
            raise

    def _abandon(self, future: Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._stuck.add(future)
        self._changed()

        def released(_: Future[Any]) -> None:  # in the pool thread, when the hung call returns at last
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
                loop.call_soon_threadsafe(self._release, future)

        future.add_done_callback(released)

    def _release(self, future: Future[Any]) -> None:
        if future in self._stuck:
            self._stuck.discard(future)
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(len(self._stuck))

    def _submit(self, item: _Item) -> None:
        with self._lock:
            if self._idle == 0 and len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            elif self._idle:
                self._idle -= 1  # an idle thread takes it
        self._queue.put(item)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, context, fn, args = item
            if future.set_running_or_notify_cancel():
                try:
                    result = context.run(fn, *args)
                except BaseException as exc:  # handed to the awaiting task, as an executor does
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Idle threads end; a hung one ends with the process (daemon)."""
        for _ in self._threads:
            self._queue.put(None)
