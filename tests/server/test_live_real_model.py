"""The official `openai` and `ollama` clients against a live server running the real default model.

The batched engine (`llamarun.llm.async_llm.AsyncLLM`) serves SmolLM2-135M from a test store; greedy
requests make the answers checkable: a known fact, streamed text equal to whole text, concurrent
identical requests equal to each other, real log-probabilities, and engine metrics that move.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from conftest import DEFAULT, live_server, make_resolver

pytest.importorskip("llamarun.llm.async_llm")

from llamarun.server import ModelManager, create_app
from llamarun.server.model_manager import default_loader

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
GREEDY = {"temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def url(store) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLAMARUN_HOME", str(store.root))  # the engine resolves the name in the same store
        mp.setenv("HF_HUB_OFFLINE", "1")
        manager = ModelManager(default_loader(max_kv_tokens=4096), resolve=make_resolver(store),
                               context_length=1024)
        with live_server(create_app(manager, store=store, preload=DEFAULT), timeout=240) as base:
            yield base


@pytest.fixture(scope="module")
def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def oll(url: str) -> ollama.Client:
    return ollama.Client(host=url, timeout=120)


def test_openai_chat_answers_and_streams_the_same(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model=DEFAULT, messages=QUESTION, **GREEDY)
    text = whole.choices[0].message.content
    assert "Paris" in text
    assert 0 < whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 10
    chunks = list(oai.chat.completions.create(model=DEFAULT, messages=QUESTION, stream=True,
                                              stream_options={"include_usage": True}, **GREEDY))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the same prompt hit the prefix cache


def test_openai_logprobs_and_completions(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=DEFAULT, messages=QUESTION, logprobs=True, top_logprobs=3, **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        tops = [alt.logprob for alt in t.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and all(v <= 0 for v in tops)
        assert math.isclose(t.logprob, tops[0], abs_tol=1e-4)  # greedy picks the most likely token
    done = oai.completions.create(model=DEFAULT, prompt="The capital of France is", max_tokens=4,
                                  temperature=0)
    assert done.choices[0].text.strip() and done.choices[0].finish_reason in ("length", "stop")
    assert [m.id for m in oai.models.list()] == [DEFAULT]


def test_concurrent_identical_requests_agree(oai: openai.OpenAI) -> None:
    def ask(_i: int) -> str:
        r = oai.chat.completions.create(model=DEFAULT, messages=QUESTION, **GREEDY)
        return r.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert len(set(answers)) == 1 and "Paris" in answers[0]


def test_ollama_chat_generate_and_model_endpoints(oll: ollama.Client, oai: openai.OpenAI) -> None:
    options = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 12}  # Ollama's default penalty off
    r = oll.chat(model=DEFAULT, messages=QUESTION, options=options)
    via_openai = oai.chat.completions.create(model=DEFAULT, messages=QUESTION, **GREEDY)
    via_openai = via_openai.choices[0].message.content
    assert r.message.content == via_openai and "Paris" in r.message.content and r.done
    assert 0 < r.eval_count <= 12 and r.eval_duration > 0 and r.prompt_eval_duration > 0
    streamed = list(oll.chat(model=DEFAULT, messages=QUESTION, options=options, stream=True))
    assert "".join(p.message.content for p in streamed) == r.message.content
    g = oll.generate(model=DEFAULT, prompt="1, 2, 3, 4,", raw=True,
                     options={"temperature": 0, "num_predict": 6})
    assert "5" in g.response and g.done_reason in ("length", "stop")
    assert [m.model for m in oll.list().models] == [DEFAULT]
    assert oll.show(DEFAULT).details.quantization_level == "Q4_1"
    ps = oll.ps().models
    assert [m.model for m in ps] == [DEFAULT] and ps[0].context_length == 1024 and ps[0].size > 50_000_000


def test_errors_from_the_real_engine(oll: ollama.Client, oai: openai.OpenAI, url: str) -> None:
    long = [{"role": "user", "content": "word " * 1500}]
    with pytest.raises(ollama.ResponseError) as err:
        oll.chat(model=DEFAULT, messages=long)
    assert err.value.status_code == 400 and "context holds 1024" in err.value.error
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=DEFAULT, messages=QUESTION, max_tokens=5000)
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line and not line.startswith("#")}
    model = f'{{model="{DEFAULT}"}}'
    assert values[f"llamarun_kv_blocks_total{model}"] > 0 and values[f"llamarun_kv_blocks_used{model}"] >= 0
    assert values[f"llamarun_prefix_cache_hits_total{model}"] > 0
    assert values[f"llamarun_engine_requests_finished_total{model}"] >= 8
