"""Adapter paths stay inside the configured roots (`--adapter-root`, by default the personas dirs).

A path given to the API is refused when it is relative, when it spells `..`, when it lies outside
every root, or when a symlink on the way (or a file inside the adapter) leads out of the roots.
Checks happen on resolved paths, so the engine is handed the real location that was checked.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from loragate.adapters.errors import (
    AdapterNotFoundError,
    AdapterValidationError,
    PathNotAllowedError,
)
from loragate.adapters.untrusted import excerpt

# Linux's PATH_MAX: no longer path names a file, and a longer one is refused before any system
# call (and before it is echoed back in a message).
MAX_PATH_CHARS = 4096


@dataclass(frozen=True)
class AdapterRoots:
    """The directories adapters may be loaded from, as given and as resolved."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, paths: Iterable[Path]) -> AdapterRoots:
        return cls(tuple(Path(p).absolute() for p in paths))

    def describe(self) -> str:
        return ", ".join(str(r) for r in self.roots) or "(none configured)"

    def _resolved(self) -> list[Path]:
        return [root.resolve() for root in self.roots]

    def contains(self, resolved: Path) -> bool:
        return any(resolved.is_relative_to(root) for root in self._resolved())

    def confine(self, path: str | Path, *, param: str = "path") -> Path:
        """The resolved directory `path` names, if it lies inside a root; else a 400."""
        raw = self._check_lexically(str(path), param)
        shown = excerpt(str(path))
        resolved = _resolve(raw, f"The adapter path '{shown}'", param)
        self.check_inside(resolved, what=f"The adapter path '{shown}'", param=param)
        try:
            is_dir = stat.S_ISDIR(os.stat(resolved).st_mode)
        except OSError as exc:
            missing = exc.errno in (errno.ENOENT, errno.ENOTDIR)  # ENOTDIR: through a file
            if missing:
                raise AdapterNotFoundError(
                    f"The adapter path '{shown}' does not exist.", param=param
                ) from exc
            raise AdapterValidationError(
                f"The adapter path '{shown}' cannot be opened ({exc.strerror}).", param=param
            ) from exc
        if not is_dir:
            raise AdapterValidationError(
                f"The adapter path '{shown}' is not a directory.", param=param
            )
        return resolved

    def _check_lexically(self, text: str, param: str) -> Path:
        """Refuse before touching the file system: nothing is revealed about outside paths."""
        if not text.strip():
            raise PathNotAllowedError("The adapter path is empty.", param=param)
        if "\x00" in text:
            raise PathNotAllowedError("The adapter path contains a NUL character.", param=param)
        if len(text) > MAX_PATH_CHARS:
            raise PathNotAllowedError(
                f"The adapter path is {len(text)} characters long, above {MAX_PATH_CHARS}.",
                param=param,
            )
        raw, shown = Path(text), excerpt(text)
        if not raw.is_absolute():
            raise PathNotAllowedError(f"The adapter path '{shown}' must be absolute.", param=param)
        if ".." in raw.parts:
            raise PathNotAllowedError(
                f"The adapter path '{shown}' contains '..'; give the plain path inside "
                f"an adapter root ({self.describe()}).",
                param=param,
            )
        if not self.roots:
            raise PathNotAllowedError(
                "No adapter roots are configured: start the server with --adapter-root DIR "
                "(or --personas-dir DIR) to allow loading adapters from DIR.",
                param=param,
            )
        if not any(raw.is_relative_to(root) for root in [*self.roots, *self._resolved()]):
            raise PathNotAllowedError(
                f"The adapter path '{shown}' is outside the adapter roots ({self.describe()}).",
                param=param,
            )
        return raw

    def check_inside(self, resolved: Path, *, what: str, param: str = "path") -> None:
        """Refuse a resolved path (a symlink's target) that lies outside every root."""
        if not self.contains(resolved):
            # Where it leads stays unsaid: the message would tell the client about outside paths.
            raise PathNotAllowedError(
                f"{what} leads outside the adapter roots through a symlink; "
                f"allowed roots: {self.describe()}.",
                param=param,
            )

    def confine_file(self, file: Path, *, param: str = "path") -> Path:
        """A file inside an already confined adapter directory, checked the same way."""
        what = f"'{file.name}' in '{file.parent}'"
        resolved = _resolve(file, what, param)
        self.check_inside(resolved, what=what, param=param)
        return resolved


def _resolve(path: Path, what: str, param: str) -> Path:
    try:
        # Not strict: a symlink out of the roots is refused for leading out, whether or not
        # its target exists, so that nothing is revealed about outside paths.
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise AdapterValidationError(
            f"{what} cannot be resolved (a symlink loop?).", param=param
        ) from exc
