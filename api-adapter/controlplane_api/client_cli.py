"""`cpw jobs submit | get | cancel | list`: operate through the API from a shell.

The API URL comes from --api or CPW_API_URL (default http://127.0.0.1:8000), the token from
CPW_API_TOKEN. Output is JSON; exit codes: 0 ok, 1 the API refused (its ARM error is printed to
stderr), 2 bad usage or the API unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from controlplane_workers.apiclient import api_client, api_url, refused

OPERATIONS = ("create", "get", "delete", "list", "action", "update")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    jobs = subparsers.add_parser(
        "jobs", help="submit, inspect and cancel jobs through the API (CPW_API_URL, CPW_API_TOKEN)"
    )
    jobs.add_argument("--api", default=None, help="API base URL (CPW_API_URL, default http://127.0.0.1:8000)")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)

    submit = sub.add_parser("submit", help="submit a job")
    submit.add_argument("namespace", help="provider namespace, e.g. Demo.Compute")
    submit.add_argument("type", help="resource type, e.g. virtualMachines")
    submit.add_argument("operation", choices=OPERATIONS)
    submit.add_argument("--name", default="", help="resource name")
    submit.add_argument("--subscription", default="")
    submit.add_argument("--resource-group", default="")
    submit.add_argument("--action", default=None)
    submit.add_argument("--body", default="{}", help="JSON body passed to the provider (or @file)")
    submit.add_argument("--priority", type=int, choices=range(10), default=None, metavar="0-9")
    submit.add_argument("--wait", type=float, default=0.0, help="wait up to N seconds for the result")
    submit.add_argument(
        "--delay", type=float, default=None, metavar="SECONDS", help="start the job no earlier than SECONDS from now"
    )
    submit.add_argument("--idempotency-key", default=None)

    get = sub.add_parser("get", help="show a job")
    get.add_argument("job_id")
    get.add_argument("--wait", type=float, default=0.0, help="poll up to N seconds until the job ends")

    cancel = sub.add_parser("cancel", help="cancel a job (idempotent; refused once it ended)")
    cancel.add_argument("job_id")
    cancel.add_argument("--wait", type=float, default=0.0)

    listing = sub.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--status", choices=("Accepted", "Running", "Succeeded", "Failed", "Canceled"))
    listing.add_argument("--top", type=int, default=50)
    listing.add_argument("--all", action="store_true", help="follow nextLink through every page")
    for command in (submit, get, cancel, listing):
        command.add_argument("--api", default=argparse.SUPPRESS, help="API base URL (CPW_API_URL)")
    jobs.set_defaults(func=run)
    return jobs


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _refused(response: httpx.Response) -> int:
    return refused(response, "cpw jobs")


def run(args: argparse.Namespace) -> int:
    base = api_url(args.api)
    try:
        with api_client(base, "cpw jobs", timeout=max(30.0, getattr(args, "wait", 0) + 10)) as http:
            return _dispatch(args, http)
    except httpx.TransportError as exc:
        print(f"cpw jobs: cannot reach the API at {base}: {type(exc).__name__}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace, http: httpx.Client) -> int:
    command = args.jobs_command
    if command == "submit":
        raw = args.body
        if raw.startswith("@"):
            with open(raw[1:]) as f:
                raw = f.read()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            print(f"cpw jobs submit: --body is not JSON: {exc}", file=sys.stderr)
            return 2
        payload: dict[str, Any] = {
            "namespace": args.namespace,
            "type": args.type,
            "operation": args.operation,
            "request": {
                "subscription_id": args.subscription,
                "resource_group": args.resource_group,
                "resource_name": args.name,
                "action": args.action,
                "body": body,
            },
        }
        if args.priority is not None:
            payload["priority"] = args.priority
        if args.delay is not None:
            payload["delay"] = args.delay  # the API checks it against its maximum
        extra = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
        params = {"wait": args.wait} if args.wait else {}
        response = http.post("/jobs", json=payload, params=params, headers=extra)
    elif command == "get":
        params = {"wait": args.wait} if args.wait else {}
        response = http.get(f"/jobs/{args.job_id}")
        if response.status_code == 200 and args.wait and response.json()["status"] in ("Accepted", "Running"):
            http.get(f"/operationResults/{args.job_id}", params=params)
            response = http.get(f"/jobs/{args.job_id}")
    elif command == "cancel":
        params = {"wait": args.wait} if args.wait else {}
        response = http.delete(f"/jobs/{args.job_id}", params=params)
    else:
        params2: dict[str, Any] = {"top": args.top}
        if args.status:
            params2["status"] = args.status
        response = http.get("/jobs", params=params2)
        if response.status_code == 200 and args.all:
            page = response.json()
            items = list(page["value"])
            while page.get("nextLink"):
                response = http.get(page["nextLink"])
                if response.status_code != 200:
                    return _refused(response)
                page = response.json()
                items.extend(page["value"])
            _print({"value": items, "nextLink": None})
            return 0
    if response.status_code >= 300:
        return _refused(response)
    _print(response.json())
    return 0
