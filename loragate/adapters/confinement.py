"""Adapter paths stay inside the configured roots (`--adapter-root`, by default the personas dirs).

A path given to the API is refused when it is relative, when it spells `..`, when it lies outside
every root, or when a symlink on the way (or a file inside the adapter) leads out of the roots.
Checks happen on resolved paths, so the engine is handed the real location that was checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from loragate.server.errors import BadRequestError


class PathNotAllowedError(BadRequestError):
    code = "adapter_path_not_allowed"


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

    def confine(self, path: str | Path, *, param: str = "path") -> Path:
        """The resolved directory `path` names, if it lies inside a root; else a 400."""
        raw = Path(path)
        if not str(path).strip():
            raise PathNotAllowedError("The adapter path is empty.", param=param)
        if not raw.is_absolute():
            raise PathNotAllowedError(f"The adapter path '{path}' must be absolute.", param=param)
        if ".." in raw.parts:
            raise PathNotAllowedError(
                f"The adapter path '{path}' contains '..'; give the plain path inside "
                f"an adapter root ({self.describe()}).",
                param=param,
            )
        if not self.roots:
            raise PathNotAllowedError(
                "No adapter roots are configured: start the server with --adapter-root DIR "
                "(or --personas-dir DIR) to allow loading adapters from DIR.",
                param=param,
            )
        # Refuse before touching the file system, so that nothing is revealed about outside paths.
        lexical_roots = [*self.roots, *self._resolved()]
        if not any(raw.is_relative_to(root) for root in lexical_roots):
            raise PathNotAllowedError(
                f"The adapter path '{path}' is outside the adapter roots ({self.describe()}).",
                param=param,
            )
        try:
            resolved = raw.resolve(strict=True)
        except (FileNotFoundError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise BadRequestError(
                f"The adapter path '{path}' does not exist.", param=param, code="adapter_not_found"
            ) from exc
        self.check_inside(resolved, what=f"The adapter path '{path}'", param=param)
        if not resolved.is_dir():
            raise BadRequestError(
                f"The adapter path '{path}' is not a directory.",
                param=param,
                code="invalid_adapter",
            )
        return resolved

    def check_inside(self, resolved: Path, *, what: str, param: str = "path") -> None:
        """Refuse a resolved path (a symlink's target) that lies outside every root."""
        if not any(resolved.is_relative_to(root) for root in self._resolved()):
            raise PathNotAllowedError(
                f"{what} leads outside the adapter roots through a symlink (to '{resolved}'); "
                f"allowed roots: {self.describe()}.",
                param=param,
            )

    def confine_file(self, file: Path, *, param: str = "path") -> Path:
        """A file inside an already confined adapter directory, checked the same way."""
        resolved = file.resolve()
        self.check_inside(resolved, what=f"'{file.name}' in '{file.parent}'", param=param)
        return resolved
