"""The API adapter's `cpw` commands: `cpw api`, `cpw indexer`, `cpw dev` and `cpw jobs`.

Registered through the entry point group `cpw.commands` (pyproject.toml), so the core's CLI never
imports this package.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from controlplane_workers.cli import cli_overrides, setup_cli_logging

from . import client_cli
from .settings import api_settings_or_exit


def _no_postgres_url(command: str) -> int:
    print(
        f"cpw {command}: configuration error: CPW_POSTGRES_URL (or CPW_POSTGRES_URL_FILE) is not set",
        file=sys.stderr,
    )
    return 2


def cmd_api(args: argparse.Namespace) -> int:
    settings = api_settings_or_exit(**cli_overrides(args))
    if args.print_config:  # `cpw config` prints the core's settings; this adds the API's
        print(json.dumps(settings.safe_dump(), indent=2, default=str))
        return 0
    if settings.api_store == "postgresql" and not settings.postgres_url:
        return _no_postgres_url("api")
    setup_cli_logging(settings)
    from .serve import run_api

    return run_api(settings)


def cmd_indexer(args: argparse.Namespace) -> int:
    settings = api_settings_or_exit(**cli_overrides(args))
    if not settings.postgres_url:
        return _no_postgres_url("indexer")
    setup_cli_logging(settings)
    from .indexer import run_indexer

    return run_indexer(settings)


def cmd_dev(args: argparse.Namespace) -> int:
    from .dev import run_dev

    return run_dev(args)


def register(subparsers: Any) -> None:
    """Add the API's commands to `cpw`."""
    api = subparsers.add_parser("api", help="run the API adapter (CPW_* settings)")
    api.add_argument("--url", help="broker URL (CPW_RABBITMQ_URL)")
    api.add_argument("--print-config", action="store_true", help="print the effective settings and exit")
    api.set_defaults(func=cmd_api)

    indexer = subparsers.add_parser(
        "indexer", help="project provider.results into PostgreSQL (CPW_POSTGRES_URL) for CPW_API_STORE=postgresql"
    )
    indexer.add_argument("--url", help="broker URL (CPW_RABBITMQ_URL)")
    indexer.set_defaults(func=cmd_indexer)

    dev = subparsers.add_parser("dev", help="the local platform: API, worker and the demo provider on memory://")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--url", default="memory://", help="broker URL (default: the embedded broker)")
    dev.add_argument("--providers", help="module:attr of the providers (default: the demo)")
    dev.set_defaults(func=cmd_dev)

    client_cli.add_parser(subparsers)
