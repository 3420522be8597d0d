"""What every cpw process does around its work: stop on SIGTERM/SIGINT, connect with backoff.

The worker (run.py) and the API (controlplane_api.serve) share it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from .errors import BrokerUnavailable
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
