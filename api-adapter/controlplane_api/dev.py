"""`cpw dev`: the whole platform in one process on the embedded broker, for a first look."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import uvloop

from . import __version__, looplag, tracing
from .logs import setup_logging
from .providers import load_providers
from .run import install_stop_handlers, serve_worker
from .settings import settings_or_exit

log = logging.getLogger("cpw.dev")

DEMO = "controlplane_workers.examples.demo:registry"


def run_dev(args: argparse.Namespace) -> int:
    settings = settings_or_exit(
        rabbitmq_url=args.url,
        providers=args.providers or DEMO,
        api_host=args.host,
        api_port=args.port,
        health_host="127.0.0.1",
        log_format="text",
    )
    setup_logging(settings.log_level, settings.log_format, settings.worker_id)
    providers = load_providers(settings.providers, use_entry_points=False)
    tracing.setup_from_env("cpw-dev", instance_id=settings.worker_id, version=__version__)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(serve_worker(settings, providers, stop))]
        try:
            from controlplane_api.serve import serve_api
        except ImportError:
            log.warning("the API adapter is not available; running the worker only")
        else:
            tasks.append(asyncio.create_task(serve_api(settings, stop, banner=True)))
        async with looplag.watching():
            await asyncio.gather(*tasks)

    try:
        uvloop.run(main())
    finally:
        tracing.shutdown()  # flush the spans still batched
    return 0
