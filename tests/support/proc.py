"""What a process costs, read from /proc: CPU seconds and peak memory, with its descendants.

Benchmarks charge each process (broker, API, worker, load generator) for its share of a run.
"""

from __future__ import annotations

import os
from pathlib import Path


def _tree(pid: int) -> list[int]:
    """A process and its live descendants."""
    out, pending = [], [pid]
    while pending:
        current = pending.pop()
        if current in out:
            continue
        out.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU seconds of a process (all its threads) and, with `tree`, its live descendants."""
    total = 0
    for current in _tree(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def peak_rss_bytes(pid: int) -> int:
    """VmHWM (peak resident set) of a process and all its descendants, summed."""
    total = 0
    for current in _tree(pid):
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def rss_bytes(pid: int) -> int:
    """VmRSS (current resident set) of one process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
