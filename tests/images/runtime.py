"""The image's runtime venv without Docker, and `cpw` run in it the way the chart runs the container.

`build_runtime_venv()` follows the Dockerfile's build stage: copy the build context exactly as
.dockerignore lets it through, `pip wheel --no-deps .`, a venv without pip, the wheel (and its
dependencies) installed into it, byte-compiled. `Sandbox` starts a command from that venv under
bubblewrap: the whole root filesystem read-only, a fresh tmpfs on /tmp as the only writable path,
a new PID namespace, uid/gid 10001 when user namespaces are allowed, the host network (the test
broker listens on 127.0.0.1), and the environment the Dockerfile's runtime stage sets.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.images.dockerfile import DOCKERFILES, ROOT, context_files, parse

VENV_IN_IMAGE = "/opt/venv"

# Reports every attempt to write outside /tmp, even one the program swallows (a CPython audit hook,
# loaded from PYTHONPATH as sitecustomize, prints `CPW-WRITE <event> <path>` on stderr).
AUDIT_HOOK = """
import os, sys

def _outside_tmp(path):
    try:
        path = os.fsdecode(path)
    except TypeError:
        return False
    if path in ("/dev/null", "/dev/stdout", "/dev/stderr") or path.startswith("/proc/"):
        return False
    path = os.path.abspath(path)
    return not (path == "/tmp" or path.startswith("/tmp/"))

_WRITES = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate",
           "os.chmod", "os.chown", "os.utime", "shutil.copyfile", "shutil.move"}

def _hook(event, args):
    if event == "open" and args:
        path, mode, flags = (list(args) + [None, None, None])[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
        if writing and not isinstance(path, int) and _outside_tmp(path):
            sys.stderr.write(f"CPW-WRITE open {path}\\n")
    elif event in _WRITES and args and not isinstance(args[0], int) and _outside_tmp(args[0]):
        sys.stderr.write(f"CPW-WRITE {event} {args[0]}\\n")

sys.addaudithook(_hook)
"""


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build_runtime_venv(work: Path) -> Path:
    """The Dockerfile's build stage, on this machine; returns the venv (the image's /opt/venv)."""
    context = work / "context"
    for rel in context_files():
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(work / "dist"), "."],
        cwd=context,
        check=True,
        capture_output=True,
        timeout=180,
    )
    venv = work / "venv"
    base_python = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base_python), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    # as the Dockerfiles: the wheel with their extras (one venv serves both images' tests: their union)
    wheels = sorted(f"{p}[{','.join(image_extras())}]" for p in (work / "dist").glob("*.whl"))
    subprocess.run(
        [*pip, "--python", str(venv / "bin" / "python"), "install", "--compile", *wheels],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv


def installed_extras(component: str) -> list[str]:
    """The extras a Dockerfile's build stage installs the wheel with (`...whl)[otel,postgresql]`)."""
    build = " ".join(i.raw for i in parse(DOCKERFILES[component]).stage("build").all("RUN"))
    match = re.search(r"\.whl\)\[([a-z0-9,-]+)\]", build)
    return match.group(1).split(",") if match else []


def image_extras() -> list[str]:
    return sorted({extra for component in DOCKERFILES for extra in installed_extras(component)})


def image_env(component: str, venv: Path) -> dict[str, str]:
    """The runtime stage's ENV, with the image's venv path mapped to this one."""
    env = parse(DOCKERFILES[component]).stage("runtime").env()
    out = {}
    for key, value in env.items():
        value = value.replace("$PATH", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        out[key] = value.replace(VENV_IN_IMAGE, str(venv))
    out["LANG"] = "C.UTF-8"
    return out


def entrypoint(component: str) -> list[str]:
    form = parse(DOCKERFILES[component]).stage("runtime").last("ENTRYPOINT").exec_form  # type: ignore[union-attr]
    assert form is not None
    return form


def bwrap_base(user_namespace: bool) -> list[str]:
    argv = [
        "bwrap",
        "--ro-bind",
        "/",
        "/",
        "--tmpfs",
        "/tmp",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--unshare-pid",
        "--unshare-ipc",
        "--die-with-parent",
        "--chdir",
        "/tmp",
    ]
    if user_namespace:
        argv += ["--unshare-user", "--uid", "10001", "--gid", "10001"]
    return argv


def bwrap_problem() -> str | None:
    """None when bwrap can run a sandbox here; else why not."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed: run `make test` (it installs it) or apt-get install bubblewrap"
    probe = subprocess.run([*bwrap_base(False), "true"], capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f"bwrap cannot start a sandbox here: {probe.stderr.strip()}"


def user_namespaces_work() -> bool:
    probe = subprocess.run([*bwrap_base(True), "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@dataclass
class Sandbox:
    """One `cpw` process under bwrap; `binds` are host paths made visible (read-only) at the same path."""

    argv: list[str]
    env: dict[str, str]
    binds: list[Path]
    log_path: Path
    user_namespace: bool = True
    process: subprocess.Popen | None = None
    _log: object = field(default=None, repr=False)

    def start(self) -> Sandbox:
        command = bwrap_base(self.user_namespace)
        for path in self.binds:
            command += ["--ro-bind", str(path), str(path)]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*command, *self.argv], env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def target_pid(self) -> int:
        """The host pid of the sandboxed command (bwrap's child's child), for signals."""
        assert self.process is not None
        name = Path(self.argv[0]).name
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for pid in _descendants(self.process.pid):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if any(Path(os.fsdecode(a)).name == name for a in cmdline[:2] if a):
                    return pid
            time.sleep(0.05)
        raise RuntimeError(f"no {name} process under bwrap {self.process.pid}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM to cpw itself (as the kubelet sends it to PID 1), then the sandbox's exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.target_pid(), signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
