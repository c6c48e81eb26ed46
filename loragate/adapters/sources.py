"""Where personas come from at run time: --persona NAME=PATH, the watched --personas-dir, and
the ones the persona API registered, saved in the state directory (persona_store.py).

A personas directory holds one bundle (or bare peft adapter) per subdirectory. It is scanned at
start-up and then every `persona_watch_interval` seconds: a new subdirectory is registered, a
changed one is swapped in as a new version (lazily loaded), a removed one is unregistered once
its requests are done. A bundle that does not validate is listed as failed with its error, and
a bundle caught half-written simply validates on a later scan. Whatever one bundle holds, its
failure stays its own: the other bundles are registered, and start-up goes on.

The API's saved personas are registered again at start-up after the configured ones (over one
of the same name: the API's came later), re-validated as a PUT is. One whose bundle has gone or
no longer validates is listed as failed with the reason, and start-up goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from loragate.adapters.errors import PersonaError, PersonaStoreError
from loragate.adapters.manifest import ADAPTER_CONFIG, MANIFEST_NAME, ManifestError, read_bundle
from loragate.adapters.persona_flags import persona_args
from loragate.adapters.persona_store import PersonaStore, SavedVersion
from loragate.adapters.registry import PersonaRegistry
from loragate.settings import ServerSettings

logger = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


def bundle_dirs(personas_dir: Path) -> list[Path]:
    if not personas_dir.is_dir():
        return []
    return sorted(
        child
        for child in personas_dir.iterdir()
        if child.is_dir()
        and not child.name.startswith(".")
        and ((child / MANIFEST_NAME).is_file() or (child / ADAPTER_CONFIG).is_file())
    )


def fingerprint(bundle_dir: Path) -> Fingerprint:
    """Names, sizes and modification times of the bundle's files, one level of subdirectories."""
    entries = []
    for path in sorted([*bundle_dir.glob("*"), *bundle_dir.glob("*/*")]):
        with suppress(OSError):  # a file removed while scanning shows up on the next scan
            if path.is_file():
                stat = path.stat()
                entries.append((str(path.relative_to(bundle_dir)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def bundle_name(bundle_dir: Path) -> str:
    try:
        return read_bundle(bundle_dir).name
    except ManifestError:
        return bundle_dir.name


class PersonaWatcher:
    def __init__(self, registry: PersonaRegistry, dirs: list[Path], interval: float):
        self._registry = registry
        self._dirs = dirs
        self._interval = interval
        self._seen: dict[Path, tuple[str, Fingerprint]] = {}
        self._clashes: set[Path] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.scan()
            except Exception:
                logger.exception("scanning the personas directories failed")

    async def scan(self) -> None:
        found = await asyncio.to_thread(self._snapshot)
        for bundle_dir, (name, print_) in found.items():
            seen = self._seen.get(bundle_dir)
            if seen == (name, print_):
                continue
            if seen is not None and seen[0] != name:  # the manifest renamed the persona
                await self._unregister(bundle_dir, seen[0])
            if await self._register(bundle_dir, name):
                self._seen[bundle_dir] = (name, print_)
        for bundle_dir, (name, _) in list(self._seen.items()):
            if bundle_dir not in found:
                del self._seen[bundle_dir]
                await self._unregister(bundle_dir, name)

    async def _unregister(self, bundle_dir: Path, name: str) -> None:
        persona = self._registry.find(name)
        if persona is not None and persona.source == "dir" and persona.path == bundle_dir:
            logger.info("persona '%s' left %s: unregistering it", name, bundle_dir)
            await self._registry.delete(name, wait=False)

    def _snapshot(self) -> dict[Path, tuple[str, Fingerprint]]:
        found = {}
        for personas_dir in self._dirs:
            for bundle_dir in bundle_dirs(personas_dir):
                found[bundle_dir.resolve()] = (bundle_name(bundle_dir), fingerprint(bundle_dir))
        return found

    async def _register(self, bundle_dir: Path, name: str) -> bool:
        """Register (or refuse, visibly) the bundle; False when another source owns the name."""
        owner = self._registry.find(name)
        if owner is not None and (owner.source != "dir" or owner.path != bundle_dir):
            if bundle_dir not in self._clashes:
                logger.warning("%s is not registered: the persona '%s' comes from %s",
                               bundle_dir, name, owner.path)  # fmt: skip
                self._clashes.add(bundle_dir)
            return False
        try:
            await self._registry.put(name, bundle_dir, source="dir", load=False)
        except PersonaError as exc:
            logger.warning("persona bundle %s refused: %s", bundle_dir, exc.message)
            self._registry.record_failure(name, bundle_dir, "dir", exc.message)
        except Exception as exc:  # a check that missed a case must not end the scan
            logger.exception("persona bundle %s could not be read", bundle_dir)
            error = f"The bundle could not be read ({type(exc).__name__})."
            self._registry.record_failure(name, bundle_dir, "dir", error)
        return True


async def restore_saved(registry: PersonaRegistry, store: PersonaStore) -> None:
    """Register the API's saved personas again (loaded on first use), then save its changes."""
    for saved in await asyncio.to_thread(store.current):
        await _restore(registry, saved)
    registry.record_api_changes_in(store)  # only now: registering them again saves nothing


async def _restore(registry: PersonaRegistry, saved: SavedVersion) -> None:
    try:
        persona, _ = await registry.put(saved.name, saved.path, source="api", load=False)
    except PersonaError as exc:
        error = f"Saved from the persona API, refused at start-up: {exc.message}"
    except Exception as exc:  # a check that missed a case must not stop start-up
        logger.exception("saved persona '%s' (%s) could not be read", saved.name, saved.path)
        error = f"Saved from the persona API, unreadable at start-up ({type(exc).__name__})."
    else:
        if persona.version != saved.version:
            logger.warning("persona '%s' registered again from %s at version %s; the API "
                           "registered version %s there", saved.name, saved.path,
                           persona.version, saved.version)  # fmt: skip
        return
    logger.error("saved persona '%s' (%s): %s", saved.name, saved.path, error)
    registry.record_failure(saved.name, saved.path, "api", error)


async def _open_store(settings: ServerSettings) -> PersonaStore:
    try:
        return await asyncio.to_thread(PersonaStore, settings.state_dir)
    except PersonaStoreError as exc:  # no silent start without the personas saved there
        raise RuntimeError(
            f"{exc.message} Start-up stops rather than go on without the personas saved in it: "
            "free or repair it, or move it aside to start without them."
        ) from exc


@asynccontextmanager
async def personas_running(
    registry: PersonaRegistry, settings: ServerSettings
) -> AsyncIterator[PersonaRegistry]:
    """Scan, register the --persona ones, then the API's saved ones, preload if asked, watch;
    stop it all at the end."""
    watcher = PersonaWatcher(registry, list(settings.personas_dir), settings.persona_watch_interval)
    await watcher.scan()
    for name, path in persona_args(settings):
        try:
            await registry.put(name, path, source="cli", load=False)
        except PersonaError as exc:  # an explicitly named persona must work: stop here
            raise RuntimeError(f"--persona {name}={path}: {exc.message}") from exc
    store = await _open_store(settings)
    task = None
    try:
        await restore_saved(registry, store)
        if settings.preload_personas:
            await registry.preload()
        if settings.personas_dir and settings.persona_watch_interval > 0:
            task = asyncio.create_task(watcher.run(), name="persona-watcher")
        yield registry
    finally:
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await registry.close()
        store.close()
