"""Embeddings through the server on the real engine (a tiny model): equal to LLM.embed, also while
generations stream on the same engine, whose text they leave unchanged."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from conftest import live_server
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.api import LLM
from llamarun.server import ModelManager, create_app
from llamarun.server.model_manager import default_loader
from llamarun.store.home import ModelStore
from llamarun.store.resolve import resolve_model

TEXTS = ["hello there", "the theme is in the hills", "tiny"]


@pytest.mark.timeout(300)
def test_server_embeddings_equal_the_python_api_beside_generation(tmp_path) -> None:
    spec = TinySpec()
    model = str(add_byte_tokenizer(write_hf(spec, make_weights(spec, seed=2)[0], tmp_path / "tiny")))
    llm = LLM(model)
    try:
        want = llm.embed(TEXTS)
    finally:
        llm.close()
    store = ModelStore(tmp_path / "home")
    manager = ModelManager(default_loader(), resolve=lambda name: resolve_model(name, pull=False, store=store).name)
    gen = {"model": model, "prompt": "the", "stream": False, "options": {"num_predict": 16, "temperature": 0}}

    async def generate_and_embed(url: str) -> tuple[list[str], list[list[list[float]]]]:
        async with httpx.AsyncClient(base_url=url, timeout=240) as http:
            async def text() -> str:
                r = await http.post("/api/generate", json=gen)
                return r.json()["response"]

            async def vectors() -> list[list[float]]:
                r = await http.post("/api/embed", json={"model": model, "input": TEXTS})
                return r.json()["embeddings"]

            results = await asyncio.gather(*(text() for _ in range(4)), *(vectors() for _ in range(3)))
        return results[:4], results[4:]

    with live_server(create_app(manager, store=store, preload=model), timeout=120) as url:
        alone = httpx.post(f"{url}/api/generate", json=gen, timeout=240).json()["response"]
        texts, batches = asyncio.run(asyncio.wait_for(generate_and_embed(url), 280))
        assert texts == [alone] * 4
        for batch in batches:
            assert batch == [pytest.approx(v, abs=1e-6) for v in want]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        got = client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
        assert [d.embedding for d in got.data] == [pytest.approx(v, abs=1e-6) for v in want]
        assert got.usage.prompt_tokens == sum(len(llm.prompt_ids(t)) for t in TEXTS)
