"""`--persona NAME=PATH` flags, and the adapter roots they imply."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from loragate.settings import ServerSettings


def default_roots(settings: ServerSettings) -> list[Path]:
    """The personas directories, and --adapter-root (by default, the --persona paths)."""
    explicit = settings.adapter_root or [path for _, path in persona_args(settings)]
    return [*settings.personas_dir, *explicit]


def persona_args(settings: ServerSettings) -> Iterator[tuple[str, Path]]:
    for value in settings.persona:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--persona expects NAME=PATH, got '{value}'")
        yield name, Path(path).absolute()
