"""`/metrics`' text: loragate's registry, the residency read from the persona registry at each
scrape, and prometheus_client's global registry, where vLLM's stat logger keeps `vllm:*`.

With PROMETHEUS_MULTIPROC_DIR set (several server processes), every process's values are read
from that directory instead, as vLLM's own server does (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loragate.adapters.registry import PersonaRegistry
from loragate.server.metrics import PERSONA, GatewayMetrics
from loragate.settings import ServerSettings


class ResidencyCollector(Collector):
    """Which adapters the engine holds, read when scraped: never stale, and a deleted persona
    is simply no longer listed."""

    def __init__(self, catalog: PersonaRegistry, settings: ServerSettings):
        self._catalog = catalog
        self._max_loras = settings.max_loras
        self._max_cpu_loras = settings.max_cpu_loras

    def collect(self) -> Iterator[Metric]:
        personas = self._catalog.personas()
        loaded = GaugeMetricFamily(
            "loragate_persona_loaded",
            "1 while the persona's adapter is in the engine, else 0.",
            labels=PERSONA,
        )
        for persona in personas:
            loaded.add_metric([persona.name, persona.version], 1.0 if persona.loaded else 0.0)
        yield loaded
        yield GaugeMetricFamily(
            "loragate_lora_adapters_resident",
            "Persona adapters in the engine (compare loragate_lora_max_cpu_loras).",
            value=sum(p.loaded for p in personas),
        )
        yield GaugeMetricFamily(
            "loragate_lora_max_loras",
            "Adapters one engine batch can hold (--max-loras).",
            value=self._max_loras,
        )
        yield GaugeMetricFamily(
            "loragate_lora_max_cpu_loras",
            "Adapters the engine keeps loaded (--max-cpu-loras).",
            value=self._max_cpu_loras,
        )


def watch_personas(
    metrics: GatewayMetrics, catalog: PersonaRegistry, settings: ServerSettings
) -> None:
    """Count the registry's adapter events and show its residency in `metrics`."""
    metrics.add_live(ResidencyCollector(catalog, settings))
    catalog.report_to(metrics)


def render(metrics: GatewayMetrics) -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
        for live in metrics.live:  # read at scrape time: in no process's files
            shared.register(live)
        return generate_latest(shared)
    return generate_latest(metrics.registry) + generate_latest(REGISTRY)
