"""loragate's own Prometheus metrics: the gateway's HTTP traffic, every persona's requests, and
its adapters' residency. vLLM's engine metrics (`vllm:*`) come from vLLM's own stat logger, in
prometheus_client's global registry; `/metrics` shows both (exposition.py).

Label values stay bounded: a route is its template (`unmatched` when none matched), a persona is
a registered name (`unknown` for a model that was not found), and a deleted persona's series go.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from loragate.server.request_record import RequestRecord

# vLLM's bucket families (vllm/v1/metrics/buckets.py), so that a panel built for vLLM's
# histograms reads loragate's the same way.
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
TIME_TO_FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                               1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0,
                               2560.0)  # fmt: skip
INTER_TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                               1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
# The gateway answers most requests without the engine (models, health, errors): finer.
HTTP_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0, 60.0, 120.0, 300.0)  # fmt: skip
BODY_BYTES_BUCKETS = tuple(float(4**k) for k in range(4, 15))  # 256 B .. 256 MiB
ADAPTER_LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

PERSONA = ("persona", "version")
M = TypeVar("M", bound=MetricWrapperBase)
UNMATCHED_ROUTE = "unmatched"


class GatewayMetrics:
    """Every loragate metric, in a registry of its own (one per app: tests build many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.live: list[Collector] = []  # collectors that read their values when scraped
        # The label sets each persona has used, to remove them all when it is deleted.
        self._series: defaultdict[str, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = (
            defaultdict(set)
        )
        self._define_http()
        self._define_personas()
        self._define_adapters()

    def _define_http(self) -> None:
        r = self.registry
        self.http_requests = Counter("loragate_http_requests", "HTTP requests answered, by route, "
                                     "method and status.", ["route", "method", "status"],
                                     registry=r)  # fmt: skip
        self.http_latency = Histogram("loragate_http_request_duration_seconds", "Time from a "
                                      "request's arrival to its last byte, by route.", ["route"],
                                      buckets=HTTP_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.http_body = Histogram("loragate_http_request_body_bytes", "Request body sizes, by "
                                   "route.", ["route"], buckets=BODY_BYTES_BUCKETS,
                                   registry=r)  # fmt: skip
        self.open_streams = Gauge("loragate_http_open_streams", "Server-sent event streams in "
                                  "progress.", registry=r, multiprocess_mode="livesum")  # fmt: skip
        self.disconnects = Counter("loragate_http_client_disconnects", "Clients that left before "
                                   "their response was complete, by route.", ["route"],
                                   registry=r)  # fmt: skip

    def _define_personas(self) -> None:
        r = self.registry
        outcome = [*PERSONA, "outcome"]
        self.requests = Counter("loragate_persona_requests", "Requests for a model (the base "
                                "model or a persona), by outcome: ok, client_error, "
                                "server_error, aborted.", outcome, registry=r)  # fmt: skip
        self.prompt_tokens = Counter("loragate_persona_prompt_tokens", "Prompt tokens "
                                     "processed.", PERSONA, registry=r)  # fmt: skip
        self.completion_tokens = Counter("loragate_persona_completion_tokens", "Tokens "
                                         "generated.", PERSONA, registry=r)  # fmt: skip
        self.ttft = Histogram("loragate_persona_time_to_first_token_seconds", "From a request's "
                              "arrival at the gateway to its first generated token.", PERSONA,
                              buckets=TIME_TO_FIRST_TOKEN_BUCKETS, registry=r)  # fmt: skip
        self.itl = Histogram("loragate_persona_inter_token_latency_seconds", "Between two "
                             "consecutive outputs of a request's generation.", PERSONA,
                             buckets=INTER_TOKEN_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.e2e = Histogram("loragate_persona_e2e_request_latency_seconds", "From a request's "
                             "arrival to its last byte.", PERSONA,
                             buckets=REQUEST_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.queue_time = Histogram("loragate_persona_request_queue_time_seconds", "Time spent "
                                    "waiting in the engine's queue before the first step.",
                                    PERSONA, buckets=REQUEST_LATENCY_BUCKETS,
                                    registry=r)  # fmt: skip
        self.in_flight = Gauge("loragate_persona_requests_in_flight", "Requests being answered.",
                               PERSONA, registry=r, multiprocess_mode="livesum")  # fmt: skip

    def _define_adapters(self) -> None:
        r = self.registry
        self.loads = Counter("loragate_persona_adapter_loads", "Adapter loads into the engine.",
                             PERSONA, registry=r)  # fmt: skip
        self.load_time = Histogram("loragate_persona_adapter_load_seconds", "Time to load an "
                                   "adapter into the engine.", PERSONA,
                                   buckets=ADAPTER_LOAD_BUCKETS, registry=r)  # fmt: skip
        self.load_failures = Counter("loragate_persona_adapter_load_failures", "Adapters the "
                                     "engine refused.", PERSONA, registry=r)  # fmt: skip
        self.evictions = Counter("loragate_persona_adapter_evictions", "Adapters taken out of "
                                 "the engine to make room (least recently used).", PERSONA,
                                 registry=r)  # fmt: skip
        self.swaps = Counter("loragate_persona_swaps", "New versions published in place of a "
                             "persona's current one.", ["persona"], registry=r)  # fmt: skip

    def add_live(self, collector: Collector) -> None:
        self.registry.register(collector)
        self.live.append(collector)

    # -- Recording ----------------------------------------------------------------------------

    def _labelled(self, metric: M, name: str, *values: str) -> M:
        self._series[name].add((metric, (name, *values)))
        return metric.labels(name, *values)

    def request_started(self, model: str, version: str) -> Callable[[], None]:
        """Count a request in flight; call the result when it is done."""
        gauge = self._labelled(self.in_flight, model, version)
        gauge.inc()
        return gauge.dec

    def request_finished(self, record: RequestRecord, *, known: Callable[[str], bool]) -> None:
        """Count a finished request; `known(model)`: the model is still served (the series of a
        persona deleted meanwhile are not made again)."""
        route = record.route or UNMATCHED_ROUTE
        elapsed = record.elapsed_s()
        self.http_requests.labels(route, record.method, str(record.status or 500)).inc()
        self.http_latency.labels(route).observe(elapsed)
        self.http_body.labels(route).observe(record.body_bytes)
        if record.disconnected:
            self.disconnects.labels(route).inc()
        if record.model is not None and known(record.model):
            self._persona_finished(record, record.model, elapsed)

    def _persona_finished(self, record: RequestRecord, model: str, elapsed: float) -> None:
        v = record.version
        self._labelled(self.requests, model, v, record.outcome()).inc()
        self._labelled(self.prompt_tokens, model, v).inc(record.prompt_tokens)
        self._labelled(self.completion_tokens, model, v).inc(record.completion_tokens)
        self._labelled(self.e2e, model, v).observe(elapsed)
        if record.ttft_s is not None:
            self._labelled(self.ttft, model, v).observe(record.ttft_s)
        if record.queue_time_s is not None:
            self._labelled(self.queue_time, model, v).observe(record.queue_time_s)
        itl = self._labelled(self.itl, model, v)
        for gap in record.inter_token_s:
            itl.observe(gap)

    # -- AdapterEvents (the registry's) -----------------------------------------------------

    def adapter_loaded(self, name: str, version: str, seconds: float) -> None:
        self._labelled(self.loads, name, version).inc()
        self._labelled(self.load_time, name, version).observe(seconds)

    def adapter_load_failed(self, name: str, version: str) -> None:
        self._labelled(self.load_failures, name, version).inc()

    def adapter_evicted(self, name: str, version: str) -> None:
        self._labelled(self.evictions, name, version).inc()

    def persona_swapped(self, name: str, old_version: str, new_version: str) -> None:
        del old_version, new_version  # counted by name: a version's series is its own
        self._labelled(self.swaps, name).inc()

    def persona_deleted(self, name: str) -> None:
        for metric, labels in self._series.pop(name, set()):
            with contextlib.suppress(KeyError):  # never observed under these labels
                metric.remove(*labels)
