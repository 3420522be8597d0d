"""`cpw dev`: the whole platform in one process on the embedded broker, for a first look.

With CPW_API_STORE=postgresql (`make run-postgres`) the projector runs in the same process, as it must: the
embedded broker's stream exists only here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable

from controlplane_workers import __version__, tracing
from controlplane_workers.lifecycle import run_process
from controlplane_workers.logs import setup_logging
from controlplane_workers.providers import load_providers
from controlplane_workers.run import serve_worker

from .serve import serve_api
from .settings import api_settings_or_exit

log = logging.getLogger("cpw.dev")

DEMO = "controlplane_workers.examples.demo:registry"


def run_dev(args: argparse.Namespace) -> int:
    settings = api_settings_or_exit(
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

    def serve(stop: asyncio.Event) -> Awaitable[object]:
        parts = [serve_worker(settings, providers, stop), serve_api(settings, stop, banner=True)]
        if settings.api_store == "postgresql":  # the projector too: the embedded broker lives in this process
            from .projector import Projector

            parts.append(Projector(settings).run(stop))
        return asyncio.gather(*parts)

    if settings.api_store == "postgresql" and not settings.postgres_url:
        print("cpw dev: configuration error: CPW_POSTGRES_URL (or CPW_POSTGRES_URL_FILE) is not set", file=sys.stderr)
        return 2
    return run_process("cpw dev", serve)
