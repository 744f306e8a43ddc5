"""The app around the APIs: the API key, /health, the page at /, and Prometheus /metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DEFAULT
from fake_llm import DEFAULT_REPLY
from fastapi.testclient import TestClient
from prometheus_text import at, parse_metrics

import llamarun.server.app as app_module

pytestmark = pytest.mark.timeout(60)
USER = [{"role": "user", "content": "hi"}]


def test_api_key_guards_every_route_but_health(make_app) -> None:
    with TestClient(make_app(api_key="s3cret")) as client:
        assert client.get("/health").json()["status"] == "ok"
        r = client.post("/api/chat", json={"model": DEFAULT, "messages": USER, "stream": False})
        assert r.status_code == 401 and list(r.json()) == ["error"] and "API key" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = client.post("/v1/chat/completions", json={"model": DEFAULT, "messages": USER},
                        headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        error = r.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
        for path in ("/api/tags", "/v1/models", "/metrics", "/api/ps"):
            assert client.get(path, headers={"Authorization": "s3cret"}).status_code == 401, path  # no scheme
        ok = {"Authorization": "Bearer s3cret"}
        r = client.post("/api/chat", json={"model": DEFAULT, "messages": USER, "stream": False}, headers=ok)
        assert r.status_code == 200 and r.json()["message"]["content"] == DEFAULT_REPLY
        assert client.get("/v1/models", headers=ok).status_code == 200
        assert client.get("/metrics", headers=ok).status_code == 200


def test_no_key_means_open(client: TestClient) -> None:
    assert client.get("/api/tags").status_code == 200


def test_index_serves_the_page_to_browsers_and_ollamas_answer_to_others(client: TestClient, tmp_path: Path,
                                                                         monkeypatch) -> None:
    monkeypatch.setattr(app_module, "STATIC", tmp_path)
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    r = client.get("/", headers=browser)
    assert r.status_code == 200 and r.text == "Ollama is running"  # no page to show
    (tmp_path / "index.html").write_text("<!doctype html><title>chat</title>")
    r = client.get("/", headers=browser)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text == "<!doctype html><title>chat</title>"
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):  # curl, SDKs, detectors
        r = client.get("/", headers=headers)
        assert r.status_code == 200 and r.text == "Ollama is running", headers
        assert r.headers["content-type"].startswith("text/plain")
    assert client.head("/").status_code == 200


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "models_loaded": 0}
    client.post("/api/generate", json={"model": DEFAULT})
    assert client.get("/health").json() == {"status": "ok", "models_loaded": 1}


def test_metrics_count_requests_tokens_and_engine_state(client: TestClient, loader) -> None:
    for _ in range(3):
        r = client.post("/api/chat", json={"model": DEFAULT, "messages": USER, "stream": False})
        assert r.status_code == 200
    body = {"model": DEFAULT, "messages": USER, "stream": True, "max_tokens": 5}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        list(r.iter_lines())
    client.post("/api/chat", json={"model": "nope-model", "messages": USER})
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse_metrics(r.text)
    http = "llamarun_http_requests_total"
    assert at(m, http, method="POST", route="/api/chat", status="200") == 3
    assert at(m, http, method="POST", route="/api/chat", status="404") == 1
    assert at(m, http, method="POST", route="/v1/chat/completions", status="200") == 1
    model = {"model": DEFAULT}
    assert at(m, "llamarun_generations_total", **model, api="ollama", finish_reason="stop") == 3
    assert at(m, "llamarun_generations_total", **model, api="openai", finish_reason="length") == 1
    assert at(m, "llamarun_generated_tokens_total", **model) == 3 * len(DEFAULT_REPLY.encode()) + 5
    assert at(m, "llamarun_time_to_first_token_seconds_count", **model) == 4
    assert at(m, "llamarun_time_to_first_token_seconds_bucket", **model, le="+Inf") == 4
    assert at(m, "llamarun_decode_tokens_per_second_count", **model) == 4
    assert at(m, "llamarun_model_loads_total", **model) == 1
    assert at(m, "llamarun_models_loaded") == 1
    engine = loader.last().metrics()
    assert at(m, "llamarun_kv_blocks_total", **model) == engine.kv_blocks_total == 64
    assert at(m, "llamarun_kv_blocks_used", **model) == 0 and at(m, "llamarun_queue_length", **model) == 0
    assert at(m, "llamarun_prefix_cache_hits_total", **model) == engine.prefix_hits > 0
    rate = engine.prefix_hits / engine.prefix_queries
    assert at(m, "llamarun_prefix_cache_hit_rate", **model) == pytest.approx(rate)
    assert at(m, "llamarun_engine_requests_finished_total", **model) == 4
    assert at(m, "llamarun_engine_preemptions_total", **model) == 0
