"""What every cpw process does around its work: stop on SIGTERM/SIGINT, connect with backoff, and
`run_process` (uvloop, the loop-lag probe, spans flushed, exit 2 for a taken port).

The worker (run.py), the API (controlplane_api.serve) and `cpw dev` share it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop

from . import looplag, tracing
from .errors import BrokerUnavailable
from .ops import PortTaken
from .redact import redact_text

log = logging.getLogger(__name__)


async def connect_with_backoff(
    start: Callable[[], Awaitable[object]], what: str, stop: asyncio.Event, cap: float = 10.0
) -> bool:
    """Call `start()` until it connects; False if asked to stop first."""
    delay = 0.5
    while not stop.is_set():
        try:
            await start()
            return True
        except BrokerUnavailable as exc:
            log.warning("%s: broker unavailable, retrying in %.1fs: %s", what, delay, redact_text(str(exc)))
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, cap)
    return False


def install_stop_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`: the process drains and exits 0 instead of dying mid-job."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def run_process(command: str, serve: Callable[[asyncio.Event], Awaitable[object]]) -> int:
    """Run `serve(stop)` on uvloop until SIGTERM/SIGINT set `stop`: 0, or 2 with one line for a taken port."""

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        async with looplag.watching():
            await serve(stop)

    try:
        uvloop.run(main())
    except PortTaken as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    finally:
        tracing.shutdown()  # flush the spans still batched
    return 0
