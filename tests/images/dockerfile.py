"""Just enough of the Dockerfile and .dockerignore grammars to check the images without a Docker engine.

`parse()` joins continuation lines, drops comments and splits the file into stages of instructions
(exec-form arguments decoded as JSON); `context_files()` applies .dockerignore the way BuildKit does
(patterns in order, the last match wins, `!` re-includes, a pattern matching a parent matches its files).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"worker": ROOT / "worker" / "Dockerfile", "api": ROOT / "api-adapter" / "Dockerfile"}


@dataclass
class Instruction:
    keyword: str
    raw: str
    line: int

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, else None (shell form)."""
        text = self.raw.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None

    def flags(self) -> dict[str, str]:
        return {k: v for k, _, v in (w[2:].partition("=") for w in self.words() if w.startswith("--"))}

    def words(self) -> list[str]:
        return shlex.split(self.raw, posix=True)

    def args(self) -> list[str]:
        return [w for w in self.words() if not w.startswith("--")]

    def pairs(self) -> dict[str, str]:
        """ENV / LABEL / ARG key=value pairs (the legacy `ENV key value` form too)."""
        words = self.words()
        if self.keyword == "ENV" and words and "=" not in words[0]:
            return {words[0]: " ".join(words[1:])}
        out: dict[str, str] = {}
        for word in words:
            key, eq, value = word.partition("=")
            out[key] = value if eq else ""
        return out


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for instruction in self.all("ENV"):
            out.update(instruction.pairs())
        return out

    def labels(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            out.update(instruction.pairs())
        return out


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def resolved_base(self, stage: Stage) -> str:
        """The FROM reference with global ARG defaults substituted."""
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.global_args.get(m[1], m[0]), stage.base)


def logical_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):  # comments inside a continued instruction
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        out.append((start, buffer + stripped))
        buffer = ""
    if buffer:
        out.append((start, buffer))
    return out


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
            continue
        instruction = Instruction(keyword, rest, number)
        if not stages:
            assert keyword == "ARG", f"{path}:{number}: only ARG may precede the first FROM"
            global_args.update(instruction.pairs())
            continue
        stages[-1].instructions.append(instruction)
    return Dockerfile(path, global_args, stages)


def _pattern(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + "[^/]*", i + 1
        elif c == "?":
            out, i = out + "[^/]", i + 1
        elif c == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(c), i + 1
    return re.compile(out + r"\Z")


def ignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        text = os.path.normpath(line[1:] if negate else line).lstrip("/")
        rules.append((negate, _pattern(text)))
    return rules


def is_ignored(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relpath.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, pattern in rules:
        if any(pattern.match(c) for c in candidates):
            ignored = not negate
    return ignored


def context_files(root: Path = ROOT) -> list[str]:
    """Files of the repository that `docker build .` would send, per .dockerignore."""
    rules = ignore_rules(root / ".dockerignore")
    out = []
    for directory, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(directory, root)
        dirs[:] = [d for d in dirs if d not in {".git", ".venv", ".tools", "node_modules"}]
        for name in files:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not is_ignored(rel, rules):
                out.append(rel)
    return sorted(out)
