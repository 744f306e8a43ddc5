"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand.

Server-side counts (HTTP requests by route and status, tokens, time to first token, decode speed)
are kept here; engine state (running and waiting requests, KV blocks, prefix-cache hits) is read from
each loaded model's `metrics()` at scrape time, so it is never stale and costs nothing between scrapes.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Labels = ()) -> str:
    items = (*labels, *extra)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return str(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


class Histogram:
    """Cumulative buckets, a sum and a count, per label set."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.series: dict[Labels, list[float]] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, value: float, labels: Labels = ()) -> None:
        row = self.series.setdefault(labels, [0.0] * (len(self.buckets) + 2))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                row[i] += 1
        row[-2] += value
        row[-1] += 1

    def lines(self, name: str) -> Iterable[str]:
        for labels, row in sorted(self.series.items()):
            for bound, count in zip(self.buckets, row, strict=False):
                yield f"{name}_bucket{_labels(labels, (('le', _number(bound)),))} {_number(count)}"
            yield f"{name}_bucket{_labels(labels, (('le', '+Inf'),))} {_number(row[-1])}"
            yield f"{name}_sum{_labels(labels)} {_number(row[-2])}"
            yield f"{name}_count{_labels(labels)} {_number(row[-1])}"


class ServerMetrics:
    """Everything `/metrics` reports; safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[Labels, float] = defaultdict(float)  # method, route, status
        self.in_flight = 0
        self.request_seconds = Histogram(DURATION_BUCKETS)
        self.generations: dict[Labels, float] = defaultdict(float)  # model, api, finish reason
        self.prompt_tokens: dict[Labels, float] = defaultdict(float)
        self.cached_tokens: dict[Labels, float] = defaultdict(float)
        self.generated_tokens: dict[Labels, float] = defaultdict(float)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tokens_per_second = Histogram(TPS_BUCKETS)
        self.model_loads: dict[Labels, float] = defaultdict(float)

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (("method", method), ("route", route), ("status", str(status)))
        with self._lock:
            self.in_flight -= 1
            self.requests[labels] += 1
            self.request_seconds.observe(seconds, (("route", route),))

    def model_loaded(self, model: str) -> None:
        with self._lock:
            self.model_loads[(("model", model),)] += 1

    def generation_finished(self, model: str, api: str, finish_reason: str | None, stats: Any) -> None:
        """Count one finished generation; `stats` is the engine's RequestStats (None if aborted early)."""
        reason = finish_reason or "abort"
        with self._lock:
            self.generations[(("model", model), ("api", api), ("finish_reason", reason))] += 1
            if stats is None:
                return
            key = (("model", model),)
            self.prompt_tokens[key] += stats.prompt_tokens
            self.cached_tokens[key] += stats.cached_tokens
            self.generated_tokens[key] += stats.generated_tokens
            if stats.generated_tokens > 0 and stats.first_token_seconds is not None:
                self.ttft.observe(stats.first_token_seconds, key)
            if stats.generated_tokens > 1 and stats.decode_seconds > 0:
                self.tokens_per_second.observe(stats.generated_tokens / stats.decode_seconds, key)

    def render(self, models: Iterable[tuple[str, Any, int]] = ()) -> str:
        """The exposition text; `models` yields (name, EngineMetrics, memory bytes) of each loaded model."""
        out: list[str] = []

        def family(name: str, kind: str, help_: str, series: Iterable[tuple[Labels, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{_labels(labels)} {_number(v)}" for labels, v in series)

        def histogram(name: str, help_: str, h: Histogram) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} histogram")
            out.extend(h.lines(name))

        with self._lock:
            family("llamarun_http_requests_total", "counter", "HTTP requests answered, by route and status.",
                   sorted(self.requests.items()))
            family("llamarun_http_requests_in_flight", "gauge", "HTTP requests being answered now.",
                   [((), self.in_flight)])
            histogram("llamarun_http_request_duration_seconds", "Time to answer an HTTP request.",
                      self.request_seconds)
            family("llamarun_generations_total", "counter", "Generations finished, by finish reason.",
                   sorted(self.generations.items()))
            family("llamarun_prompt_tokens_total", "counter", "Prompt tokens of finished generations.",
                   sorted(self.prompt_tokens.items()))
            family("llamarun_prompt_cached_tokens_total", "counter",
                   "Prompt tokens served from the prefix cache.", sorted(self.cached_tokens.items()))
            family("llamarun_generated_tokens_total", "counter", "Tokens generated.",
                   sorted(self.generated_tokens.items()))
            histogram("llamarun_time_to_first_token_seconds", "Time from arrival to the first token.",
                      self.ttft)
            histogram("llamarun_decode_tokens_per_second", "Decode speed of each generation.",
                      self.tokens_per_second)
            family("llamarun_model_loads_total", "counter", "Models loaded.",
                   sorted(self.model_loads.items()))
        _engine_families(list(models), family)
        return "\n".join(out) + "\n"


def _engine_families(models: list[tuple[str, Any, int]], family: Any) -> None:
    def per_model(attr: str) -> list[tuple[Labels, float]]:
        return [((("model", name),), float(getattr(m, attr))) for name, m, _ in models]

    family("llamarun_models_loaded", "gauge", "Models loaded now.", [((), len(models))])
    family("llamarun_model_memory_bytes", "gauge", "Weights plus KV cache of each loaded model.",
           [((("model", name),), mem) for name, _, mem in models])
    family("llamarun_requests_running", "gauge", "Requests in the running batch.", per_model("running"))
    family("llamarun_queue_length", "gauge", "Requests waiting to be scheduled.", per_model("waiting"))
    family("llamarun_kv_blocks_used", "gauge", "KV cache blocks in use.", per_model("kv_blocks_used"))
    family("llamarun_kv_blocks_total", "gauge", "KV cache blocks in the pool.", per_model("kv_blocks_total"))
    family("llamarun_kv_cache_usage_ratio", "gauge", "Fraction of KV cache blocks in use.",
           [((("model", name),), m.kv_blocks_used / m.kv_blocks_total if m.kv_blocks_total else 0.0)
            for name, m, _ in models])
    family("llamarun_prefix_cache_queries_total", "counter", "Prompt blocks looked up in the prefix cache.",
           per_model("prefix_queries"))
    family("llamarun_prefix_cache_hits_total", "counter", "Prompt blocks found in the prefix cache.",
           per_model("prefix_hits"))
    family("llamarun_prefix_cache_hit_rate", "gauge", "Prefix-cache hits per lookup since the model loaded.",
           [((("model", name),), m.prefix_hits / m.prefix_queries if m.prefix_queries else 0.0)
            for name, m, _ in models])
    family("llamarun_engine_requests_finished_total", "counter", "Requests the engine finished.",
           per_model("requests_finished"))
    family("llamarun_engine_generated_tokens_total", "counter", "Tokens the engine generated.",
           per_model("generated_tokens"))
    family("llamarun_engine_preemptions_total", "counter", "Requests preempted when KV blocks ran out.",
           [((("model", name),), float(getattr(m, "preemptions", 0))) for name, m, _ in models])
