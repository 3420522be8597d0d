"""The API as a shell command reaches it: its URL, the bearer token, and how a refusal is printed.

Shared by `cpw jobs` (the API adapter's commands) and `cpw dlq --api`, so both read the same
CPW_API_URL / CPW_API_TOKEN / CPW_API_TOKEN_FILE.
"""

from __future__ import annotations

import os
import sys

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


def api_url(given: str | None) -> str:
    return (given or os.environ.get("CPW_API_URL") or DEFAULT_URL).rstrip("/")


def api_token(command: str) -> str | None:
    """The bearer token: CPW_API_TOKEN, or the file CPW_API_TOKEN_FILE names (as a Secret is mounted)."""
    path = os.environ.get("CPW_API_TOKEN_FILE")
    if path:
        try:
            with open(path) as file:
                return file.read().strip() or None
        except OSError as exc:
            raise SystemExit(f"{command}: CPW_API_TOKEN_FILE: cannot read {path}: {exc.strerror}") from None
    return os.environ.get("CPW_API_TOKEN")


def api_client(base: str, command: str, timeout: float = 30.0) -> httpx.Client:
    token = api_token(command)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, headers=headers, timeout=timeout)


def refused(response: httpx.Response, command: str) -> int:
    """Print the API's ARM error on stderr; exit code 1."""
    try:
        error = response.json().get("error", {})
        print(f"{command}: {response.status_code} {error.get('code')}: {error.get('message')}", file=sys.stderr)
    except ValueError:
        print(f"{command}: {response.status_code}: {response.text[:500]}", file=sys.stderr)
    return 1
