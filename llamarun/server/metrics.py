"""Prometheus `/metrics` through `prometheus_client`, in a registry of its own.

Server-side counts (HTTP requests by route and status, tokens, time to first token, decode speed) are
client Counters, Gauges and Histograms, safe to update from any thread. Engine state (running and waiting
requests, KV blocks, prefix-cache hits, preemptions, memory) is read from each loaded model's `metrics()`
at scrape time by `EngineCollector`, so it is never stale and costs nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from llamarun.engine.llm_engine import EngineMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)

LoadedModel = tuple[str, "EngineMetrics", int]  # name, engine metrics, weights + KV cache bytes


class ServerMetrics:
    """Everything `/metrics` reports. Each instance has its own registry, so apps and tests never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, model = self.registry, ["model"]
        self.requests = Counter("llamarun_http_requests", "HTTP requests answered, by route and status.",
                                ["method", "route", "status"], registry=r)
        self.in_flight = Gauge("llamarun_http_requests_in_flight", "HTTP requests being answered now.", registry=r)
        self.request_seconds = Histogram("llamarun_http_request_duration_seconds", "Time to answer an HTTP request.",
                                         ["route"], buckets=DURATION_BUCKETS, registry=r)
        self.generations = Counter("llamarun_generations", "Generations finished, by finish reason.",
                                   ["model", "api", "finish_reason"], registry=r)
        self.prompt_tokens = Counter("llamarun_prompt_tokens", "Prompt tokens of finished generations.", model,
                                     registry=r)
        self.cached_tokens = Counter("llamarun_prompt_cached_tokens", "Prompt tokens served from the prefix cache.",
                                     model, registry=r)
        self.generated_tokens = Counter("llamarun_generated_tokens", "Tokens generated.", model, registry=r)
        self.energy = Counter("llamarun_energy_joules", "GPU energy charged to finished generations (NVML).", model,
                              registry=r)
        self.ttft = Histogram("llamarun_time_to_first_token_seconds", "Time from arrival to the first token.",
                              model, buckets=TTFT_BUCKETS, registry=r)
        self.tokens_per_second = Histogram("llamarun_decode_tokens_per_second", "Decode speed of each generation.",
                                           model, buckets=TPS_BUCKETS, registry=r)
        self.model_loads = Counter("llamarun_model_loads", "Models loaded.", model, registry=r)

    def request_started(self) -> None:
        self.in_flight.inc()

    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        self.in_flight.dec()
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def model_loaded(self, model: str) -> None:
        self.model_loads.labels(model).inc()

    def generation_finished(self, model: str, api: str, finish_reason: str | None, stats: Any) -> None:
        """Count one finished generation; `stats` is the engine's RequestStats (None if aborted early)."""
        self.generations.labels(model, api, finish_reason or "abort").inc()
        if stats is None:
            return
        self.prompt_tokens.labels(model).inc(stats.prompt_tokens)
        self.cached_tokens.labels(model).inc(stats.cached_tokens)
        self.generated_tokens.labels(model).inc(stats.generated_tokens)
        if stats.energy_joules is not None:
            self.energy.labels(model).inc(stats.energy_joules)
        if stats.generated_tokens > 0 and stats.first_token_seconds is not None:
            self.ttft.labels(model).observe(stats.first_token_seconds)
        if stats.generated_tokens > 1 and stats.decode_seconds > 0:
            self.tokens_per_second.labels(model).observe(stats.generated_tokens / stats.decode_seconds)

    def render(self, models: Iterable[LoadedModel] = ()) -> str:
        """The exposition text; `models` yields (name, EngineMetrics, memory bytes) of each loaded model."""
        return generate_latest(_Scrape(self.registry, EngineCollector(models))).decode()


class _Scrape:
    """One scrape: the registry's series, then the engine's. A fresh one per scrape, so scrapes share nothing."""

    def __init__(self, registry: CollectorRegistry, engine: EngineCollector) -> None:
        self.registry = registry
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            # `_created` timestamps have no place in the 0.0.4 text format: Prometheus would store each
            # as one more gauge series per label set, doubling the series for no use.
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family
        yield from self.engine.collect()


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


_Family = type[GaugeMetricFamily] | type[CounterMetricFamily]
# (family type, name, help, value of one model from its EngineMetrics and memory bytes)
_PER_MODEL: tuple[tuple[_Family, str, str, Callable[[EngineMetrics, int], float]], ...] = (
    (GaugeMetricFamily, "llamarun_model_memory_bytes", "Weights plus KV cache of each loaded model.",
     lambda m, mem: mem),
    (GaugeMetricFamily, "llamarun_requests_running", "Requests in the running batch.", lambda m, _: m.running),
    (GaugeMetricFamily, "llamarun_queue_length", "Requests waiting to be scheduled.", lambda m, _: m.waiting),
    (GaugeMetricFamily, "llamarun_kv_blocks_used", "KV cache blocks in use.", lambda m, _: m.kv_blocks_used),
    (GaugeMetricFamily, "llamarun_kv_blocks_total", "KV cache blocks in the pool.", lambda m, _: m.kv_blocks_total),
    (GaugeMetricFamily, "llamarun_kv_cache_usage_ratio", "Fraction of KV cache blocks in use.",
     lambda m, _: _ratio(m.kv_blocks_used, m.kv_blocks_total)),
    (CounterMetricFamily, "llamarun_prefix_cache_queries", "Prompt blocks looked up in the prefix cache.",
     lambda m, _: m.prefix_queries),
    (CounterMetricFamily, "llamarun_prefix_cache_hits", "Prompt blocks found in the prefix cache.",
     lambda m, _: m.prefix_hits),
    (GaugeMetricFamily, "llamarun_prefix_cache_hit_rate", "Prefix-cache hits per lookup since the model loaded.",
     lambda m, _: _ratio(m.prefix_hits, m.prefix_queries)),
    (CounterMetricFamily, "llamarun_engine_requests_finished", "Requests the engine finished.",
     lambda m, _: m.requests_finished),
    (CounterMetricFamily, "llamarun_engine_generated_tokens", "Tokens the engine generated.",
     lambda m, _: m.generated_tokens),
    (CounterMetricFamily, "llamarun_engine_preemptions", "Requests preempted when KV blocks ran out.",
     lambda m, _: m.preemptions),
)


class EngineCollector:
    """A prometheus_client collector of the loaded models' engine state, as it is when scraped."""

    def __init__(self, models: Iterable[LoadedModel]) -> None:
        self.models = list(models)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("llamarun_models_loaded", "Models loaded now.", value=len(self.models))
        for family_type, name, help_, value in _PER_MODEL:
            family = family_type(name, help_, labels=["model"])
            for model, engine, memory in self.models:
                family.add_metric([model], float(value(engine, memory)))
            yield family
