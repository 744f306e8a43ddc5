"""ServerMetrics on its own: every family with its type, engine state read at scrape time, one registry each."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import prometheus_client
import pytest
from prometheus_text import at, family_types, parse_metrics

from llamarun.engine.llm_engine import EngineMetrics
from llamarun.server.metrics import ServerMetrics

# The /metrics contract: dashboards and alerts are written against these names and types.
FAMILIES = {
    "llamarun_http_requests": "counter", "llamarun_http_requests_in_flight": "gauge",
    "llamarun_http_request_duration_seconds": "histogram", "llamarun_generations": "counter",
    "llamarun_prompt_tokens": "counter", "llamarun_prompt_cached_tokens": "counter",
    "llamarun_generated_tokens": "counter", "llamarun_energy_joules": "counter",
    "llamarun_time_to_first_token_seconds": "histogram",
    "llamarun_decode_tokens_per_second": "histogram", "llamarun_model_loads": "counter",
    "llamarun_models_loaded": "gauge", "llamarun_model_memory_bytes": "gauge",
    "llamarun_requests_running": "gauge", "llamarun_queue_length": "gauge", "llamarun_kv_blocks_used": "gauge",
    "llamarun_kv_blocks_total": "gauge", "llamarun_kv_cache_usage_ratio": "gauge",
    "llamarun_prefix_cache_queries": "counter", "llamarun_prefix_cache_hits": "counter",
    "llamarun_prefix_cache_hit_rate": "gauge", "llamarun_engine_requests_finished": "counter",
    "llamarun_engine_generated_tokens": "counter", "llamarun_engine_preemptions": "counter",
}


def engine(**fields: int) -> EngineMetrics:
    base = dict(running=0, waiting=0, kv_blocks_total=0, kv_blocks_used=0, prefix_queries=0, prefix_hits=0,
                requests_finished=0, generated_tokens=0, preemptions=0)
    return EngineMetrics(**{**base, **fields})


def stats(prompt: int = 7, cached: int = 3, generated: int = 5, ttft: float | None = 0.2,
          decode: float = 0.5, energy: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(prompt_tokens=prompt, cached_tokens=cached, generated_tokens=generated,
                           first_token_seconds=ttft, decode_seconds=decode, energy_joules=energy)


def test_every_family_keeps_its_name_and_type_and_no_created_series() -> None:
    metrics = ServerMetrics()
    metrics.request_started()
    metrics.request_finished("GET", "/api/tags", 200, 0.02)
    metrics.model_loaded("m")
    metrics.generation_finished("m", "ollama", "stop", stats(energy=2.5))
    text = metrics.render([("m", engine(kv_blocks_total=8), 123)])
    assert family_types(text) == FAMILIES
    assert "_created" not in text
    assert "\n# TYPE llamarun_http_requests_total counter\n" in text  # the 0.0.4 name carries _total


def test_engine_state_is_read_from_each_model_at_scrape_time() -> None:
    metrics = ServerMetrics()
    busy = engine(running=2, waiting=3, kv_blocks_total=64, kv_blocks_used=16, prefix_queries=10, prefix_hits=4,
                  requests_finished=9, generated_tokens=99, preemptions=1)
    m = parse_metrics(metrics.render([("a", busy, 1000), ("b", engine(), 0)]))
    assert at(m, "llamarun_models_loaded") == 2
    assert at(m, "llamarun_model_memory_bytes", model="a") == 1000
    assert at(m, "llamarun_requests_running", model="a") == 2 and at(m, "llamarun_queue_length", model="a") == 3
    assert at(m, "llamarun_kv_blocks_used", model="a") == 16 and at(m, "llamarun_kv_blocks_total", model="a") == 64
    assert at(m, "llamarun_kv_cache_usage_ratio", model="a") == 0.25
    assert at(m, "llamarun_prefix_cache_queries_total", model="a") == 10
    assert at(m, "llamarun_prefix_cache_hits_total", model="a") == 4
    assert at(m, "llamarun_prefix_cache_hit_rate", model="a") == 0.4
    assert at(m, "llamarun_engine_requests_finished_total", model="a") == 9
    assert at(m, "llamarun_engine_generated_tokens_total", model="a") == 99
    assert at(m, "llamarun_engine_preemptions_total", model="a") == 1
    # an empty pool and an unused prefix cache give 0, not a division error or NaN
    assert at(m, "llamarun_kv_cache_usage_ratio", model="b") == 0 == at(m, "llamarun_prefix_cache_hit_rate", model="b")
    # nothing is kept between scrapes: a model that went away is gone from the next one
    m = parse_metrics(metrics.render())
    assert at(m, "llamarun_models_loaded") == 0
    assert not [k for k in m if k[0] == "llamarun_kv_blocks_total"]


def test_generations_tokens_and_latency_histograms() -> None:
    metrics = ServerMetrics()
    metrics.generation_finished("m", "openai", "length", stats(generated=5, ttft=0.2, decode=0.5))
    metrics.generation_finished("m", "openai", None, None)  # aborted before any stats
    metrics.generation_finished("m", "ollama", "stop", stats(generated=1, ttft=0.03))  # one token: no decode rate
    m = parse_metrics(metrics.render())
    assert at(m, "llamarun_generations_total", model="m", api="openai", finish_reason="length") == 1
    assert at(m, "llamarun_generations_total", model="m", api="openai", finish_reason="abort") == 1
    assert at(m, "llamarun_prompt_tokens_total", model="m") == 14
    assert at(m, "llamarun_prompt_cached_tokens_total", model="m") == 6
    assert at(m, "llamarun_generated_tokens_total", model="m") == 6
    metrics.generation_finished("m", "ollama", "stop", stats(energy=1.5))  # a GPU request: metered
    metrics.generation_finished("m", "ollama", "stop", stats(energy=0.25))
    assert at(parse_metrics(metrics.render()), "llamarun_energy_joules_total", model="m") == pytest.approx(1.75)
    assert at(m, "llamarun_time_to_first_token_seconds_count", model="m") == 2
    assert at(m, "llamarun_time_to_first_token_seconds_sum", model="m") == pytest.approx(0.23)
    assert at(m, "llamarun_time_to_first_token_seconds_bucket", model="m", le="0.05") == 1
    assert at(m, "llamarun_time_to_first_token_seconds_bucket", model="m", le="0.25") == 2
    assert at(m, "llamarun_decode_tokens_per_second_count", model="m") == 1
    assert at(m, "llamarun_decode_tokens_per_second_bucket", model="m", le="10.0") == 1  # 5 tokens / 0.5 s
    assert at(m, "llamarun_decode_tokens_per_second_bucket", model="m", le="5.0") == 0


def test_requests_in_flight_and_by_route_from_many_threads() -> None:
    metrics = ServerMetrics()
    metrics.request_started()
    assert at(parse_metrics(metrics.render()), "llamarun_http_requests_in_flight") == 1

    def answer() -> None:
        for _ in range(500):
            metrics.request_started()
            metrics.request_finished("POST", "/api/chat", 200, 0.003)

    threads = [threading.Thread(target=answer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    metrics.request_finished("GET", "/metrics", 200, 2.0)
    m = parse_metrics(metrics.render())
    assert at(m, "llamarun_http_requests_in_flight") == 0
    assert at(m, "llamarun_http_requests_total", method="POST", route="/api/chat", status="200") == 4000
    assert at(m, "llamarun_http_request_duration_seconds_bucket", route="/api/chat", le="0.005") == 4000
    assert at(m, "llamarun_http_request_duration_seconds_bucket", route="/metrics", le="1.0") == 0
    assert at(m, "llamarun_http_request_duration_seconds_count", route="/metrics") == 1


def test_each_instance_has_its_own_registry() -> None:
    first, second = ServerMetrics(), ServerMetrics()  # the global registry would refuse the second
    first.model_loaded("m")
    first.model_loaded("m")
    second.model_loaded("m")
    assert at(parse_metrics(first.render()), "llamarun_model_loads_total", model="m") == 2
    assert at(parse_metrics(second.render()), "llamarun_model_loads_total", model="m") == 1
    assert "llamarun_" not in prometheus_client.generate_latest().decode()


def test_metrics_escape_label_values() -> None:
    metrics = ServerMetrics()
    weird = 'we"ird\\name\n'
    metrics.model_loaded(weird)
    text = metrics.render()
    assert 'llamarun_model_loads_total{model="we\\"ird\\\\name\\n"} 1' in text
    assert at(parse_metrics(text), "llamarun_model_loads_total", model=weird) == 1
