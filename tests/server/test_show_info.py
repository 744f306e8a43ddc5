"""/api/show: the served context and the sampling defaults as `parameters`, tokenizer keys with `verbose`."""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest
from conftest import DEFAULT, live_server, make_resolver
from fake_llm import FakeLoader
from fastapi.testclient import TestClient

from llamarun.loaders.gguf.reader import read_gguf
from llamarun.sampling.params import SamplingParams
from llamarun.server import ModelManager, create_app
from llamarun.server.show_info import tokenizer_keys

pytestmark = pytest.mark.timeout(60)


def parameters(text: str) -> dict[str, str]:
    """Ollama's "name value" lines -> {name: value}."""
    return dict(line.split(None, 1) for line in text.splitlines())


def test_show_reports_the_served_context_and_sampling_defaults(store) -> None:
    manager = ModelManager(FakeLoader(), resolve=make_resolver(store))
    with live_server(create_app(manager, store=store)) as url:
        client = ollama.Client(host=url, timeout=30)
        show = client.show(DEFAULT)
        params = parameters(show.parameters)
        d = SamplingParams()
        assert {k: float(v) for k, v in params.items()} == {
            "temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p, "repeat_penalty": d.repetition_penalty,
            "repeat_last_n": d.repeat_last_n, "num_ctx": 4096}  # not loaded: what a load would give (default 4096)
        assert params["temperature"] == "0.8" and params["top_k"] == "40"  # Ollama's defaults, as it prints them
        assert show.modelinfo["llama.context_length"] == 8192  # model_info stays what the file says
        client.generate(model=DEFAULT, prompt="x", options={"num_ctx": 256, "num_predict": 1}, keep_alive="10m")
        assert parameters(client.show(DEFAULT).parameters)["num_ctx"] == "256"  # the loaded model's context


def test_the_servers_ctx_and_the_trained_context_bound_num_ctx(store) -> None:
    for ctx, expected in ((2048, "2048"), (100_000, "8192")):
        manager = ModelManager(FakeLoader(), resolve=make_resolver(store), context_length=ctx)
        with TestClient(create_app(manager, store=store)) as client:
            show = client.post("/api/show", json={"model": DEFAULT}).json()
        assert parameters(show["parameters"])["num_ctx"] == expected


def test_verbose_adds_tokenizer_keys_without_the_token_arrays(store, default_gguf: Path) -> None:
    meta = read_gguf(default_gguf).metadata
    manager = ModelManager(FakeLoader(), resolve=make_resolver(store))
    with TestClient(create_app(manager, store=store)) as client:
        plain = client.post("/api/show", json={"model": DEFAULT}).json()["model_info"]
        verbose = client.post("/api/show", json={"model": DEFAULT, "verbose": True}).json()["model_info"]
    assert not any(k.startswith("tokenizer.") for k in plain)
    assert verbose.items() >= plain.items()
    assert verbose["tokenizer.ggml.model"] == meta["tokenizer.ggml.model"]
    assert verbose["tokenizer.ggml.bos_token_id"] == meta["tokenizer.ggml.bos_token_id"]
    assert verbose["tokenizer.ggml.eos_token_id"] == meta["tokenizer.ggml.eos_token_id"]
    assert verbose["tokenizer.ggml.token_count"] == len(meta["tokenizer.ggml.tokens"]) > 1000
    assert not any(isinstance(v, (list, dict)) for v in verbose.values())  # no 49k-entry arrays


def test_verbose_for_a_loaded_model_that_is_not_a_gguf(store) -> None:
    manager = ModelManager(FakeLoader(format="safetensors"), resolve=make_resolver(store))
    with TestClient(create_app(manager, store=store)) as client:
        client.post("/api/generate", json={"model": DEFAULT, "prompt": "x", "stream": False})
        slot = manager.get(DEFAULT)
        keys = tokenizer_keys(manager, DEFAULT, Path("/nonexistent"), "hf")
    tok = slot.served.tokenizer
    assert keys["tokenizer.ggml.token_count"] == tok.vocab_size
    assert (keys["tokenizer.ggml.bos_token_id"], keys["tokenizer.ggml.eos_token_id"]) == (tok.bos_id, tok.eos_id)
