"""What happens to persona adapters, told to whoever watches (the server's metrics): the
adapters layer stays free of any metrics library, and a registry nobody watches tells nobody."""

from __future__ import annotations

from typing import Protocol


class AdapterEvents(Protocol):
    def adapter_loaded(self, name: str, version: str, seconds: float) -> None: ...

    def adapter_load_failed(self, name: str, version: str) -> None: ...

    def adapter_evicted(self, name: str, version: str) -> None: ...

    def persona_swapped(self, name: str, old_version: str, new_version: str) -> None: ...

    def persona_deleted(self, name: str) -> None: ...


class NoEvents:
    def adapter_loaded(self, name: str, version: str, seconds: float) -> None:
        pass

    def adapter_load_failed(self, name: str, version: str) -> None:
        pass

    def adapter_evicted(self, name: str, version: str) -> None:
        pass

    def persona_swapped(self, name: str, old_version: str, new_version: str) -> None:
        pass

    def persona_deleted(self, name: str) -> None:
        pass


class EventFanOut:
    """Every event, to each of several watchers (the metrics and the traces)."""

    def __init__(self, *watchers: AdapterEvents):
        self.watchers = list(watchers)

    def adapter_loaded(self, name: str, version: str, seconds: float) -> None:
        for watcher in self.watchers:
            watcher.adapter_loaded(name, version, seconds)

    def adapter_load_failed(self, name: str, version: str) -> None:
        for watcher in self.watchers:
            watcher.adapter_load_failed(name, version)

    def adapter_evicted(self, name: str, version: str) -> None:
        for watcher in self.watchers:
            watcher.adapter_evicted(name, version)

    def persona_swapped(self, name: str, old_version: str, new_version: str) -> None:
        for watcher in self.watchers:
            watcher.persona_swapped(name, old_version, new_version)

    def persona_deleted(self, name: str) -> None:
        for watcher in self.watchers:
            watcher.persona_deleted(name)
