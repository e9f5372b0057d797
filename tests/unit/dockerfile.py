"""What the tests need of a Dockerfile without a Docker engine: its instructions per stage, and the build
context its .dockerignore lets through (Docker's rules: patterns in order, the last match wins, a pattern
that matches a directory covers what is inside, `!` lets back in)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    """One FROM ... block: its base image, name and instructions as (keyword, arguments)."""

    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.image}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """ENV k=v pairs (the form the Dockerfile uses)."""
        return dict(re.findall(r"(\w+)=(\S+)", " ".join(self.all("ENV"))))


def stages(path: Path) -> list[Stage]:
    """The Dockerfile's stages; continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    out: list[Stage] = []
    for line in filter(None, (line.strip() for line in text.splitlines())):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            image, _, name = args.partition(" AS ")
            out.append(Stage(image, name or None))
        else:
            out[-1].instructions.append((keyword, args))
    return out


def exec_form(args: str) -> list[str]:
    """CMD / ENTRYPOINT / HEALTHCHECK CMD in JSON (exec) form."""
    value = json.loads(args[args.index("[") :])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _matches(pattern: str, path: str) -> bool:
    """Does `pattern` match `path` or one of its parent directories?"""
    regex = re.compile(
        "^"
        + re.escape(pattern.strip("/"))
        .replace(r"\*\*/", "(?:.*/)?")
        .replace(r"\*", "[^/]*")
        .replace(r"\?", "[^/]")
        + "$"
    )
    parts = path.split("/")
    return any(regex.match("/".join(parts[: i + 1])) for i in range(len(parts)))


def context(root: Path, dockerignore: Path) -> set[str]:
    """Every file of `root` (relative paths) that the .dockerignore sends to the build."""
    patterns = [
        p.strip() for p in dockerignore.read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    files = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel.startswith((".git/", ".venv/", ".tools/")):
            continue
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            if _matches(pattern.lstrip("!"), rel):
                keep = negate
        if keep:
            files.add(rel)
    return files


def copy_sources(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from another stage)."""
    out = []
    for args in stage.all("COPY"):
        words = [w for w in args.split() if not w.startswith("--chown")]
        if any(w.startswith("--from") for w in words):
            continue
        out.append((words[:-1], words[-1]))
    return out


def materialise(root: Path, files: set[str], stage: Stage, into: Path) -> Path:
    """The stage's COPY instructions carried out from the build context into `into` (its WORKDIR)."""
    for sources, destination in copy_sources(stage):
        for source in sources:
            inside = sorted(f for f in files if f == source or f.startswith(source.rstrip("/") + "/"))
            assert inside, f"COPY {source}: nothing in the build context (see the .dockerignore)"
            for f in inside:
                target = into / destination / (Path(f).name if f == source else Path(f).relative_to(source))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / f, target)
    return into
