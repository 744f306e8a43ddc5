"""64 concurrent streaming clients against the real engine on a tiny model: all complete, /metrics counts them."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from conftest import live_server, wait_until
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.server import ModelManager, create_app
from llamarun.server.model_manager import default_loader
from llamarun.store.home import ModelStore
from llamarun.store.resolve import resolve_model

CLIENTS = 64
TOKENS = 8


@pytest.mark.timeout(300)
def test_64_streaming_clients_on_the_real_engine(tmp_path):
    spec = TinySpec()
    model = str(add_byte_tokenizer(write_hf(spec, make_weights(spec)[0], tmp_path / "tiny")))
    store = ModelStore(tmp_path / "home")
    manager = ModelManager(default_loader(), resolve=lambda name: resolve_model(name, pull=False, store=store).name)
    app = create_app(manager, store=store, preload=model)

    async def one(http: httpx.AsyncClient, i: int) -> tuple[int, str]:
        if i % 2:
            body = {"model": model, "messages": [{"role": "user", "content": f"hello {i}"}], "stream": True,
                    "max_tokens": TOKENS, "temperature": 0, "stream_options": {"include_usage": True}}
            tokens = 0
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and json.loads(line[6:]).get("usage"):
                        tokens = json.loads(line[6:])["usage"]["completion_tokens"]
            return tokens, "openai"
        body = {"model": model, "prompt": f"the {i}", "options": {"num_predict": TOKENS, "temperature": 0}}
        async with http.stream("POST", "/api/generate", json=body) as r:
            assert r.status_code == 200
            lines = [json.loads(line) async for line in r.aiter_lines() if line]
        assert lines[-1]["done"] is True
        return lines[-1]["eval_count"], "ollama"

    async def main(url: str) -> list[tuple[int, str]]:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=url, timeout=240, limits=limits) as http:
            return await asyncio.gather(*(one(http, i) for i in range(CLIENTS)))

    with live_server(app, timeout=120) as url:
        results = asyncio.run(asyncio.wait_for(main(url), 280))
        assert len(results) == CLIENTS
        assert all(tokens == TOKENS for tokens, _ in results), results

        def counted() -> float:
            text = httpx.get(f"{url}/metrics").text
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("llamarun_generations_total{"))

        assert wait_until(lambda: counted() >= CLIENTS, timeout=10), httpx.get(f"{url}/metrics").text
        kv_used = [line for line in httpx.get(f"{url}/metrics").text.splitlines()
                   if line.startswith("llamarun_kv_blocks_used")]
        assert kv_used and all(float(line.rsplit(" ", 1)[1]) == 0 for line in kv_used), kv_used
