"""The official `openai` and `ollama` clients against a live uvicorn server on loopback (fake models).

Also what only a real socket shows: a client that hangs up mid-stream aborts its request in the
engine, and 64 concurrent streaming clients all complete.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from conftest import DEFAULT, live_server, make_resolver, wait_until
from fake_llm import DEFAULT_REPLY, FakeLoader

from llamarun.server import ModelManager, create_app

pytestmark = pytest.mark.timeout(120)
KEY = "live-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "hi"}]
SLOW_REPLY = "word " * 400


@pytest.fixture(scope="module")
def live(store) -> Iterator[tuple[str, FakeLoader, ModelManager]]:
    loader = FakeLoader()
    loader.per_model["fake-slow"] = {"reply": SLOW_REPLY, "token_delay": 0.02}
    manager = ModelManager(loader, resolve=make_resolver(store))
    with live_server(create_app(manager, api_key=KEY, store=store)) as url:
        yield url, loader, manager


@pytest.fixture(scope="module")
def oai(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live[0]}/v1", api_key=KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def oll(live) -> ollama.Client:
    return ollama.Client(host=live[0], headers=AUTH, timeout=30)


def test_openai_chat_whole_and_streamed(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model=DEFAULT, messages=USER, max_tokens=200, seed=3)
    assert whole.choices[0].message.content == f"{DEFAULT_REPLY} [seed 3]"
    assert whole.choices[0].finish_reason == "stop" and whole.usage.completion_tokens > 0
    stream = oai.chat.completions.create(model=DEFAULT, messages=USER, max_tokens=200, seed=3, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_openai_completions_models_logprobs(oai: openai.OpenAI) -> None:
    done = oai.completions.create(model=DEFAULT, prompt="Once", max_tokens=5)
    assert done.choices[0].text == DEFAULT_REPLY[:5] and done.choices[0].finish_reason == "length"
    assert DEFAULT in [m.id for m in oai.models.list()]
    lp = oai.chat.completions.create(model=DEFAULT, messages=USER, max_tokens=3, logprobs=True,
                                     top_logprobs=2)
    content = lp.choices[0].logprobs.content
    assert [t.token for t in content] == list(DEFAULT_REPLY[:3])
    assert all(len(t.top_logprobs) == 2 and t.bytes == list(t.token.encode()) for t in content)


def test_openai_errors(live, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="no-such-model:1b", messages=USER)
    assert "not found" in err.value.message and err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=DEFAULT, messages=USER, temperature=5)
    assert err.value.param == "temperature"
    wrong = openai.OpenAI(base_url=f"{live[0]}/v1", api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_ollama_chat_and_generate(oll: ollama.Client) -> None:
    r = oll.chat(model=DEFAULT, messages=USER, options={"num_predict": 200})
    assert r.message.role == "assistant" and r.message.content == DEFAULT_REPLY
    assert r.done and r.done_reason == "stop" and r.eval_count == len(DEFAULT_REPLY.encode())
    parts = list(oll.chat(model=DEFAULT, messages=USER, stream=True))
    assert "".join(p.message.content for p in parts) == DEFAULT_REPLY and parts[-1].done
    g = oll.generate(model=DEFAULT, prompt="Hi", options={"num_predict": 4, "temperature": 0})
    assert g.response == DEFAULT_REPLY[:4] and g.done_reason == "length" and g.prompt_eval_count > 0
    parts = list(oll.generate(model=DEFAULT, prompt="Hi", stream=True))
    assert "".join(p.response for p in parts) == DEFAULT_REPLY and parts[-1].total_duration > 0


def test_ollama_list_show_ps_pull(oll: ollama.Client) -> None:
    assert [m.model for m in oll.list().models] == [DEFAULT]
    shown = oll.show(DEFAULT)
    assert shown.details.quantization_level == "Q4_1" and shown.modelinfo["general.architecture"] == "llama"
    assert "im_start" in shown.template
    oll.generate(model=DEFAULT, prompt="x", keep_alive="7m")
    ps = oll.ps().models
    assert [m.model for m in ps] == [DEFAULT] and ps[0].context_length == 512 and ps[0].expires_at is not None
    assert [p.status for p in oll.pull(DEFAULT, stream=True)][-1] == "success"


def test_ollama_errors(oll: ollama.Client, live) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        oll.chat(model="no-such-model:1b", messages=USER)
    assert err.value.status_code == 404 and "not found" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        list(oll.generate(model=DEFAULT, prompt="x", format={"type": "string", "pattern": "(ab"}, stream=True))
    assert err.value.status_code == 400 and "cannot be enforced" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=live[0], timeout=30).list()
    assert err.value.status_code == 401


@pytest.mark.parametrize("path, body", [
    ("/api/chat", {"model": "fake-slow", "messages": USER}),
    ("/v1/chat/completions", {"model": "fake-slow", "messages": USER, "stream": True}),
])
def test_hanging_up_mid_stream_aborts_the_request(live, path: str, body: dict) -> None:
    url, loader, manager = live
    http = httpx.Client(base_url=url, headers=AUTH, timeout=30)
    with http, http.stream("POST", path, json=body) as r:
        lines = filter(None, r.iter_lines())
        assert len([line for _, line in zip(range(3), lines, strict=False)]) == 3  # streaming has begun
    llm = loader.last("fake-slow")
    assert wait_until(lambda: llm.calls[-1].aborted and llm.running == 0, timeout=10)
    assert len(llm.calls[-1].params.stop) == 0 and llm.calls[-1].finish_reason is None
    assert wait_until(lambda: all(m.active == 0 for m in manager.loaded() if m.name == "fake-slow"))


def test_hanging_up_on_a_whole_answer_aborts_it(live) -> None:
    url, loader, manager = live
    with httpx.Client(base_url=url, headers=AUTH, timeout=0.5) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/api/generate", json={"model": "fake-slow", "prompt": "x", "stream": False})
    llm = loader.last("fake-slow")
    assert wait_until(lambda: llm.calls[-1].aborted and llm.running == 0, timeout=10)
    assert wait_until(lambda: all(m.active == 0 for m in manager.loaded() if m.name == "fake-slow"))


def test_64_concurrent_streaming_clients(live) -> None:
    url, _, _ = live

    async def one(http: httpx.AsyncClient, i: int) -> str:
        if i % 2:
            body = {"model": DEFAULT, "messages": USER, "stream": True, "seed": i}
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                text = ""
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        choices = json.loads(line[6:])["choices"]
                        text += choices[0]["delta"].get("content") or "" if choices else ""
                return text
        body = {"model": DEFAULT, "prompt": "x", "options": {"seed": i}}
        async with http.stream("POST", "/api/generate", json=body) as r:
            assert r.status_code == 200
            return "".join([json.loads(line)["response"] async for line in r.aiter_lines() if line])

    async def main() -> list[str]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60, limits=limits) as http:
            return await asyncio.gather(*(one(http, i) for i in range(64)))

    def finished() -> float:
        text = httpx.get(f"{url}/metrics", headers=AUTH).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("llamarun_generations_total{") and f'model="{DEFAULT}"' in line
                   and 'finish_reason="stop"' in line)

    before = finished()
    texts = asyncio.run(asyncio.wait_for(main(), 90))
    assert texts == [f"{DEFAULT_REPLY} [seed {i}]" for i in range(64)]
    assert wait_until(lambda: finished() - before == 64)
