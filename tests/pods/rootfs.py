"""The container's root filesystem as bwrap arguments: the host's, read-only, with mount points made for the pod.

bwrap cannot create a mount point inside a read-only bind, and the chart mounts Secrets under paths the host
lacks (/var/run/secrets/...). So the root is bwrap's own tmpfs: the host's top-level entries are bound
read-only, except the directories on the way to a mount point, which are rebuilt entry by entry (symlinks as
symlinks) down to where the host has nothing; `--remount-ro /` then freezes the tmpfs itself.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

# Made by bwrap itself (or by the pod's volumes), never bound from the host.
SPECIAL = {"/proc": ["--proc", "/proc"], "/dev": ["--dev", "/dev"], "/tmp": ["--dir", "/tmp"]}


def _chain(target: str) -> list[str]:
    """Directories (host paths, symlinks followed) that must be rebuilt so `target` can be created."""
    out: list[str] = []
    current = PurePosixPath("/")
    for part in PurePosixPath(target).parts[1:]:
        out.append(str(current))
        nxt = current / part
        while os.path.islink(nxt):
            nxt = PurePosixPath(os.path.normpath(current / os.readlink(nxt)))
        if not os.path.isdir(nxt):
            return out
        current = nxt
    return out


def root_args(targets: list[str]) -> list[str]:
    """bwrap arguments for a root in which every path of `targets` can be mounted on."""
    rebuild: set[str] = set()
    for target in targets:
        rebuild.update(_chain(target))
    args: list[str] = []

    def walk(directory: str) -> None:
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if path in SPECIAL:
                args.extend(SPECIAL[path])
            elif os.path.islink(path):
                args.extend(["--symlink", os.readlink(path), path])
            elif path in rebuild:
                args.extend(["--dir", path])
                walk(path)
            elif os.path.isdir(path) or os.path.isfile(path):
                args.extend(["--ro-bind", path, path])

    walk("/")
    return args
