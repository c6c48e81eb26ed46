"""Which persona adapters the engine holds: at most `capacity`, least recently used out first.

Loading one more first removes the least recently used idle one. When every loaded adapter is
busy, the load goes beyond the capacity (vLLM's own LRU cache of CPU LoRAs takes over). A
retired version leaves through `release`, which checks that the engine no longer lists it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from loragate.adapters.errors import AdapterStillLoadedError, PersonaUnavailableError
from loragate.adapters.events import AdapterEvents, NoEvents
from loragate.adapters.persona import Persona
from loragate.engine.protocol import Engine, EngineDeadError

logger = logging.getLogger(__name__)


class Residency:
    def __init__(
        self,
        engine: Engine,
        capacity: int,
        lock_of: Callable[[str], asyncio.Lock],
        events: AdapterEvents | None = None,
    ):
        """`lock_of(name)`: the lock a persona's loads and swaps hold, taken to evict it;
        `events` hears of each load, failed load and eviction."""
        self._engine = engine
        self._capacity = capacity
        self._lock_of = lock_of
        self._loaded: OrderedDict[int, Persona] = OrderedDict()  # least recently used first
        self._room = asyncio.Lock()
        self._events = events or NoEvents()

    def touch(self, persona: Persona) -> None:
        if persona.adapter is not None and persona.adapter.int_id in self._loaded:
            self._loaded.move_to_end(persona.adapter.int_id)

    async def load(self, persona: Persona) -> None:
        """Put the adapter into the engine (the caller holds the persona's lock)."""
        adapter = persona.adapter
        assert adapter is not None
        persona.start_loading()
        await self._make_room(persona)
        started = time.monotonic()
        try:
            await self._engine.add_adapter(adapter)
        except EngineDeadError:  # the engine's failure, not the adapter's
            persona.lost()
            self._loaded.pop(adapter.int_id, None)
            raise
        except Exception as exc:
            persona.fail(f"the engine refused the adapter: {exc}")
            self._events.adapter_load_failed(persona.name, persona.version)
            self._loaded.pop(adapter.int_id, None)
            await self._forget(adapter.int_id)  # leave the engine as it was
            raise PersonaUnavailableError(
                f"Loading persona '{persona.name}' failed: {persona.error}", param="model"
            ) from exc
        seconds = time.monotonic() - started
        persona.finish_loading(round(seconds, 4))
        self._events.adapter_loaded(persona.name, persona.version, seconds)
        logger.info("persona '%s' %s loaded in %.3f s (adapter id %d)",
                    persona.name, persona.version, persona.load_time_s, adapter.int_id)  # fmt: skip

    def forget_all(self) -> list[Persona]:
        """The engine was replaced and holds nothing: the personas it held, least recently
        used first, each registered again (to be loaded into the new one)."""
        held = [p for p in self._loaded.values() if p.state in ("loading", "loaded")]
        for persona in held:
            persona.lost()
        self._loaded.clear()
        return held

    async def release(self, persona: Persona) -> None:
        """Take a retired version out of the engine (once its requests are done)."""
        assert persona.adapter is not None
        int_id = persona.adapter.int_id
        async with self._room:
            self._loaded.pop(int_id, None)
            await self._forget(int_id)
            if int_id in await self._engine.loaded_adapter_ids():
                raise AdapterStillLoadedError(
                    f"The engine still holds adapter {int_id} of persona '{persona.name}' "
                    "after removing it."
                )

    async def _make_room(self, incoming: Persona) -> None:
        async with self._room:
            while len(self._loaded) >= self._capacity:
                victim = self._idle_victim(incoming)
                if victim is None:
                    logger.warning("all %d loaded personas are busy; loading '%s' beyond "
                                   "max_cpu_loras", len(self._loaded), incoming.name)  # fmt: skip
                    break
                # Taken without waiting (it is free): a lease of the victim waits for the removal.
                async with self._lock_of(victim.name):
                    logger.info("evicting persona '%s' (least recently used)", victim.name)
                    await self._evict(victim)
            # Reserved before the engine has it, so that concurrent loads count each other.
            assert incoming.adapter is not None
            self._loaded[incoming.adapter.int_id] = incoming

    def _idle_victim(self, incoming: Persona) -> Persona | None:
        for persona in self._loaded.values():
            busy = persona.in_flight > 0 or persona.state != "loaded"
            if persona is not incoming and not busy and not self._lock_of(persona.name).locked():
                return persona
        return None

    async def _evict(self, persona: Persona) -> None:
        assert persona.adapter is not None
        self._loaded.pop(persona.adapter.int_id, None)
        persona.evicted()
        self._events.adapter_evicted(persona.name, persona.version)
        await self._engine.remove_adapter(persona.adapter.int_id)

    async def _forget(self, int_id: int) -> None:
        if int_id in await self._engine.loaded_adapter_ids():
            await self._engine.remove_adapter(int_id)
