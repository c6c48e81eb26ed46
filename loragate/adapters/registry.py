"""The persona registry: which version of each persona is published, and the base model.

- `lease(name)` resolves the base model, `persona` or `persona@version`, loads the adapter into
  the engine on first use (one load per name at a time: per-name locks), and counts the request
  in flight until the response is done. Leases hold no lock while generating, so requests for
  different personas share engine batches. What stays in the engine is `Residency`'s business.
- `put` publishes a new version only after the engine has it (for loads) and swaps atomically:
  new leases get the new version at once, the old one leaves the engine once its requests end.
- `delete` unpublishes at once, waits for the requests in flight, removes the adapter from the
  engine and checks that the engine no longer lists it.
- Once `record_api_changes_in(store)`, each version the API (`source="api"`) publishes and each
  name it deletes is saved in the persona database first: what a PUT acknowledged survives a
  restart, and a change the database refuses is not made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from openai.types import Model

from loragate.adapters.confinement import AdapterRoots
from loragate.adapters.errors import (
    PersonaError,
    PersonaExistsError,
    PersonaNotFoundError,
    PersonaStoreError,
    PersonaUnavailableError,
    UnknownModelError,
)
from loragate.adapters.events import AdapterEvents, EventFanOut
from loragate.adapters.persona import (
    Persona,
    PersonaReader,
    PersonaSource,
    check_persona_name,
)
from loragate.adapters.persona_flags import default_roots
from loragate.adapters.persona_store import PersonaStore
from loragate.adapters.residency import Residency
from loragate.adapters.targets import ModelTarget, base_model_card
from loragate.adapters.validation import ModelShape
from loragate.engine.protocol import Engine, EngineDeadError
from loragate.settings import ServerSettings

logger = logging.getLogger(__name__)


class PersonaRegistry:
    def __init__(
        self,
        settings: ServerSettings,
        engine: Engine,
        base_name: str,
        model_path: str,
        *,
        shape: ModelShape | None = None,
    ):
        self._settings = settings
        self._engine = engine
        self._base = ModelTarget(name=base_name)
        self._base_card = base_model_card(
            base_name, model_path, engine.max_model_len, int(time.time())
        )
        self.roots = AdapterRoots.of(default_roots(settings))
        self._reader = PersonaReader(
            roots=self.roots,
            shape=shape or ModelShape.from_config(engine.hf_config),
            max_rank=engine.max_lora_rank,
            base_names=(base_name, model_path),
        )
        self._capacity = settings.max_cpu_loras
        self._current: dict[str, Persona] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._draining: defaultdict[str, set[asyncio.Task[None]]] = defaultdict(set)
        self._next_id = 1
        self._store: PersonaStore | None = None  # where the API's changes are saved, once set
        self._events = EventFanOut()  # its watchers: report_to
        self._residency = Residency(
            engine, settings.max_cpu_loras, self._locks.__getitem__, self._events
        )

    # -- the model catalog -------------------------------------------------------------------------

    @property
    def base_name(self) -> str:
        return self._base.name

    def names(self) -> list[str]:
        usable = [p.name for p in self._current.values() if p.state != "failed"]
        return [self._base.name, *sorted(usable)]

    @asynccontextmanager
    async def lease(self, name: str | None) -> AsyncIterator[ModelTarget]:
        if name is None or name == self._base.name:
            yield self._base
            return
        persona = await self._check_out(name)
        try:
            yield persona.target()
        finally:
            persona.check_in()

    def model_cards(self) -> list[Model]:
        cards = [self._base_card]
        for persona in sorted(self._current.values(), key=lambda p: p.name):
            if persona.state != "failed" and persona.adapter is not None:
                card = dict(
                    id=persona.name,
                    object="model",
                    created=int(persona.created),
                    owned_by="loragate",
                    root=persona.adapter.path,
                    parent=self._base.name,
                    max_model_len=self._engine.max_model_len,
                )
                cards.append(Model.model_validate(card))
        return cards

    # -- The persona API ----------------------------------------------------------------------

    def personas(self) -> list[Persona]:
        return sorted(self._current.values(), key=lambda p: p.name)

    def find(self, name: str) -> Persona | None:
        return self._current.get(name)

    def get(self, name: str) -> Persona:
        persona = self._current.get(name)
        if persona is None:
            raise PersonaNotFoundError(name, list(self._current))
        return persona

    async def put(
        self,
        name: str,
        path: str | Path,
        *,
        source: PersonaSource,
        load: bool,
        replace: bool = True,
    ) -> tuple[Persona, bool]:
        """Register (or swap in) `name` from `path`: (the persona, whether it is new)."""
        check_persona_name(name, self._base.name)
        async with self._locks[name]:
            previous = self._current.get(name)
            if previous is not None and not replace:
                raise PersonaExistsError(
                    f"The lora adapter '{name}' has already been loaded. If you want to load "
                    "the adapter in place, set 'load_inplace' to True.",
                    param="lora_name",
                )
            persona = await asyncio.to_thread(self._reader.read, name, path, source, self._new_id())
            if load:
                await self._load(persona)
            if source == "api":
                await self._save(persona)
            self._publish(persona)
        return persona, previous is None

    def record_failure(self, name: str, path: Path, source: PersonaSource, error: str) -> None:
        """Show a refused bundle (from a watched directory) in the listing, with its error."""
        current = self._current.get(name)
        if current is not None and current.state != "failed":
            logger.warning("keeping persona '%s' %s: its new files are refused: %s",
                           name, current.version, error)  # fmt: skip
            return
        self._publish(self._reader.failed(name, path, source, error))

    async def delete(self, name: str, *, wait: bool = True) -> None:
        """Unpublish now; remove from the engine once the requests in flight are done."""
        async with self._locks[name]:
            persona = self.get(name)
            if persona.source == "api" and self._store is not None:
                await asyncio.to_thread(self._store.mark_deleted, name)  # refused: nothing changes
            del self._current[name]
            persona.retire()
            self._events.persona_deleted(name)
            logger.info("persona '%s' %s unpublished", name, persona.version)
            draining = list(self._draining[name])
            if persona.adapter is not None:  # else it was refused before reaching the engine
                draining.append(asyncio.create_task(self._retire(persona)))
                self._track(name, draining[-1])
        if wait and draining:
            # Shielded: a client that hangs up does not leave the adapter half removed.
            await asyncio.shield(asyncio.gather(*draining))

    async def preload(self) -> None:
        for persona in self.personas()[: self._capacity]:
            if persona.state == "registered":
                try:
                    async with self._locks[persona.name]:
                        await self._load(persona)
                except PersonaUnavailableError as exc:
                    logger.error("preloading persona '%s' failed: %s", persona.name, exc.message)

    async def engine_replaced(self) -> None:
        """A new engine took the dead one's place: what it held is loaded into the new one."""
        for persona in self._residency.forget_all():
            if self._current.get(persona.name) is not persona:
                continue  # replaced or deleted meanwhile
            try:
                async with self._locks[persona.name]:
                    if persona.state == "registered":
                        await self._load(persona)
            except PersonaError as exc:
                logger.error("reloading persona '%s' failed: %s", persona.name, exc.message)
            except EngineDeadError:
                return  # dead again: the next engine gets them, on their next requests

    def report_to(self, events: AdapterEvents) -> None:
        """Tell `events` too of every load, eviction, swap and deletion from now on."""
        self._events.watchers.append(events)

    def record_api_changes_in(self, store: PersonaStore) -> None:
        """From now on, save the API's changes in `store` (at start-up, once the personas saved
        there are registered again: sources.restore_saved)."""
        self._store = store

    async def close(self) -> None:
        tasks = [t for ts in self._draining.values() for t in ts]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drained(self) -> None:
        """Wait until every retired version has left the engine (for tests and shutdown)."""
        while tasks := [t for ts in self._draining.values() for t in ts]:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- Internals ----------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _resolve(self, model: str) -> Persona:
        name, at, version = model.partition("@")
        persona = self._current.get(name)
        if persona is None:
            raise UnknownModelError(model, self.names())
        if at and version != persona.version:
            raise UnknownModelError(model, [*self.names(), f"{name}@{persona.version}"])
        if persona.state == "failed":
            raise PersonaUnavailableError(
                f"The persona '{name}' cannot be served: {persona.error}", param="model"
            )
        return persona

    async def _check_out(self, model: str) -> Persona:
        while True:
            persona = self._resolve(model)
            if persona.loaded:  # the common case: no lock, no wait
                self._residency.touch(persona)
                persona.check_out()
                return persona
            async with self._locks[persona.name]:
                if self._current.get(persona.name) is not persona or persona.state == "failed":
                    continue  # swapped, deleted or failed while waiting: resolve again
                if not persona.loaded:
                    await self._load(persona)
                self._residency.touch(persona)
                persona.check_out()
                return persona

    async def _load(self, persona: Persona) -> None:
        """Put the adapter into the engine (the caller holds the persona's name lock)."""
        if not self._settings.enable_lora:
            raise PersonaUnavailableError(
                "LoRA is disabled on this server (--no-enable-lora): personas cannot be served.",
                param="model",
            )
        await self._residency.load(persona)

    async def _save(self, persona: Persona) -> None:
        """Save the API's new version before it is published (the caller holds the name lock);
        one the database refuses leaves the engine again, and the current version stays."""
        store, adapter = self._store, persona.adapter
        if store is None:
            return
        assert adapter is not None  # read from its bundle: put never makes a failed one
        try:
            await asyncio.to_thread(
                store.save, persona.name, persona.version, persona.path, adapter.int_id
            )
        except PersonaStoreError:
            if persona.loaded:
                persona.retire()
                await self._residency.release(persona)
            raise

    def _publish(self, persona: Persona) -> None:
        previous = self._current.get(persona.name)
        self._current[persona.name] = persona
        logger.info("persona '%s' %s registered (%s)", persona.name, persona.version, persona.state)
        if previous is None:
            return
        if previous.state != "failed" and persona.state != "failed":
            self._events.persona_swapped(persona.name, previous.version, persona.version)
        previous.retire()
        if previous.adapter is not None:
            self._track(persona.name, asyncio.create_task(self._retire(previous)))

    def _track(self, name: str, task: asyncio.Task[None]) -> None:
        self._draining[name].add(task)
        task.add_done_callback(self._draining[name].discard)
        task.add_done_callback(_log_failure)

    async def _retire(self, persona: Persona) -> None:
        """Once its requests are done, take a replaced or deleted version out of the engine."""
        await persona.idle.wait()
        await self._residency.release(persona)
        assert persona.adapter is not None
        logger.info("persona '%s' %s left the engine (adapter id %d)",
                    persona.name, persona.version, persona.adapter.int_id)  # fmt: skip


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("retiring an adapter failed: %s", exc)
