"""`cpw`: run a worker and operate the queue from a shell.

Other packages add commands through the entry point group `cpw.commands` (a callable that takes the
subparsers): the API adapter adds `cpw api`, `cpw dev` and `cpw jobs`. The core imports none of
them, so an install of the core alone has a working worker CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from .settings import Settings, settings_or_exit

COMMANDS = "cpw.commands"
log = logging.getLogger(__name__)


def cli_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Settings given as flags (--providers, --url); they win over the environment."""
    overrides: dict[str, object] = {}
    if getattr(args, "providers", None):
        overrides["providers"] = args.providers
    if getattr(args, "url", None):
        overrides["rabbitmq_url"] = args.url
    if getattr(args, "role", None):
        overrides["worker_role"] = args.role
    return overrides


def _settings(args: argparse.Namespace) -> Settings:
    return settings_or_exit(**cli_overrides(args))


def setup_cli_logging(settings: Settings) -> None:
    from .logs import setup_logging

    setup_logging(settings.log_level, settings.log_format, settings.worker_id)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    setup_cli_logging(settings)
    from .run import run_worker

    return run_worker(settings)


def cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(_settings(args).safe_dump(), indent=2, default=str))
    return 0


def _letter_rows(letters: list[list[Any]]) -> None:
    """Dead letters as a table: rows of (job id, reason, attempts, kind, detail)."""
    from rich.console import Console
    from rich.table import Table

    table = Table("job id", "reason", "attempts", "kind", "detail", title=f"{len(letters)} dead letters")
    for row in letters:
        table.add_row(*(str(cell) for cell in row[:4]), str(row[4])[:80])
    Console().print(table)


def cmd_dlq(args: argparse.Namespace) -> int:
    if args.dlq_command != "list" and not args.job_ids and not getattr(args, "all", False):
        print(f"cpw dlq {args.dlq_command}: name job ids or pass --all", file=sys.stderr)
        return 2
    if args.api is not None:
        return _dlq_through_api(args)
    settings = _settings(args)
    from .broker import open_broker
    from .dlq import list_dead_letters, redrive, settle_one
    from .topology import Topology

    async def main() -> int:
        broker = open_broker(settings.rabbitmq_url, Topology.from_settings(settings), name="cpw dlq")
        await broker.connect()
        try:
            if args.dlq_command == "list":
                letters = await list_dead_letters(broker, args.limit)
                if args.json:
                    print(json.dumps(letters, indent=2, default=str))
                else:
                    kind = "{provider_namespace}/{resource_type} {operation}"
                    keys = ("job_id", "reason", "attempts")
                    _letter_rows([[*(d[k] for k in keys), kind.format(**d), d["detail"]] for d in letters])
                return 0
            if args.dlq_command == "discard":
                gone = [job_id for job_id in args.job_ids if await settle_one(broker, job_id, send_again=False)]
                print(f"discarded: {len(gone)}")
                return 0
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task("redriving", total=None)
                moved = await redrive(
                    broker,
                    None if args.all else args.job_ids,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            print(f"redriven: {moved}")
            return 0
        finally:
            await broker.close()

    return asyncio.run(main())


def cmd_queues(args: argparse.Namespace) -> int:
    """`cpw queues migrate`: the DLQ and the delay queues made the job queue's type (migrate.py)."""
    settings = _settings(args)
    from .broker import open_broker
    from .broker.rabbitmq import RabbitMQBroker
    from .migrate import migrate_side_queues
    from .topology import Topology

    async def main() -> int:
        broker = open_broker(settings.rabbitmq_url, Topology.from_settings(settings), name="cpw queues")
        if not isinstance(broker, RabbitMQBroker):
            print("cpw queues migrate: only RabbitMQ has queues to migrate", file=sys.stderr)
            return 2
        await broker.connect()
        try:
            done = await migrate_side_queues(broker)
            print(f"migrated: {len(done)} (CPW_QUEUE_TYPE={settings.queue_type}); restart the workers and the API")
            return 0
        finally:
            await broker.close()

    return asyncio.run(main())


def _dlq_through_api(args: argparse.Namespace) -> int:
    """`cpw dlq --api URL`: the same commands through the API's /deadLetters routes (an operator's token
    in CPW_API_TOKEN or CPW_API_TOKEN_FILE), for a shell that cannot reach the broker."""
    import httpx

    from .apiclient import api_client, api_url, refused

    command = f"cpw dlq {args.dlq_command}"
    base = api_url(args.api or None)
    try:
        with api_client(base, command) as http:
            if args.dlq_command == "list" or getattr(args, "all", False):
                limit = args.limit if args.dlq_command == "list" else None
                letters: list[dict[str, Any]] = []
                url: str | None = f"/deadLetters?top={min(limit or 1000, 1000)}"
                while url and (limit is None or len(letters) < limit):
                    response = http.get(url)
                    if response.status_code != 200:
                        return refused(response, command)
                    letters.extend(response.json()["value"])
                    url = response.json()["nextLink"]
                letters = letters[:limit]
                if args.dlq_command == "list":
                    if args.json:
                        print(json.dumps(letters, indent=2))
                    else:
                        kind = "{namespace}/{type} {operation}"
                        keys = ("id", "reason", "attempts")
                        _letter_rows([[*(d[k] for k in keys), kind.format(**d["job"]), d["detail"]] for d in letters])
                    return 0
                job_ids = [d["id"] for d in letters if d["id"] is not None]
            else:
                job_ids = args.job_ids
            done = 0
            for job_id in job_ids:
                if args.dlq_command == "redrive":
                    response = http.post(f"/deadLetters/{job_id}/redrive")
                else:
                    response = http.delete(f"/deadLetters/{job_id}")
                if response.status_code == 404:  # not (or no longer) a dead letter: as the broker mode, counted out
                    continue
                if response.status_code >= 300:
                    refused(response, command)
                    print(f"{'redriven' if args.dlq_command == 'redrive' else 'discarded'}: {done}")
                    return 1
                done += 1
            print(f"{'redriven' if args.dlq_command == 'redrive' else 'discarded'}: {done}")
            return 0
    except httpx.TransportError as exc:
        print(f"{command}: cannot reach the API at {base}: {type(exc).__name__}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpw", description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a worker (CPW_* settings)")
    worker.add_argument("--providers", help="module:attr of the providers (CPW_PROVIDERS)")
    worker.add_argument("--url", help="broker URL (CPW_RABBITMQ_URL)")
    worker.add_argument("--role", help="module:Class of a WorkerRole to run instead of the provider worker")
    worker.set_defaults(func=cmd_worker)

    for plugin in sorted(entry_points(group=COMMANDS), key=lambda e: e.name):
        try:
            register = plugin.load()
        except ImportError as exc:  # its package is not installed: the core's commands still work
            log.debug("cpw: commands %s not available: %s", plugin.name, exc)
            continue
        register(sub)

    config = sub.add_parser("config", help="print the effective settings (passwords redacted)")
    config.set_defaults(func=cmd_config)

    dlq = sub.add_parser("dlq", help="the dead-letter queue, through the broker or (--api) the API")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="show dead-lettered jobs and why")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_list.add_argument("--json", action="store_true")
    dlq_redrive = dlq_sub.add_parser("redrive", help="send dead-lettered jobs back with attempts reset")
    dlq_redrive.add_argument("job_ids", nargs="*")
    dlq_redrive.add_argument("--all", action="store_true")
    dlq_discard = dlq_sub.add_parser("discard", help="remove dead letters for good (their jobs stay Failed)")
    dlq_discard.add_argument("job_ids", nargs="+")
    for command in (dlq_list, dlq_redrive, dlq_discard):
        command.add_argument("--url", help="broker URL (CPW_RABBITMQ_URL)")
        command.add_argument(
            "--api",
            nargs="?",
            const="",
            default=None,
            metavar="URL",
            help="go through the API's /deadLetters routes instead of the broker (URL or CPW_API_URL; an "
            "operator's token in CPW_API_TOKEN or CPW_API_TOKEN_FILE)",
        )
    dlq.set_defaults(func=cmd_dlq)

    queues = sub.add_parser("queues", help="the queues beside the job queue")
    queues_sub = queues.add_subparsers(dest="queues_command", required=True)
    migrate = queues_sub.add_parser(
        "migrate", help="make the DLQ and the delay queues the job queue's type (CPW_QUEUE_TYPE), keeping messages"
    )
    migrate.add_argument("--url", help="broker URL (CPW_RABBITMQ_URL)")
    queues.set_defaults(func=cmd_queues)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
