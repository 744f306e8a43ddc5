"""Token counts as current Ollama and OpenAI report them, through the official clients.

The prompt count is the whole prompt on a prefix-cache miss and on a hit alike (clients bill it as
input tokens); the cached part is reported beside it (`prompt_eval_cached_count`, and OpenAI's
`usage.prompt_tokens_details.cached_tokens`).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from conftest import DEFAULT, live_server, make_resolver
from fake_llm import FakeLoader

from llamarun.server import ModelManager, create_app

pytestmark = pytest.mark.timeout(120)
MESSAGES = [{"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "What colour is the sky on a clear day?"}]


@pytest.fixture
def live(store) -> Iterator[tuple[str, FakeLoader]]:
    loader = FakeLoader()
    with live_server(create_app(ModelManager(loader, resolve=make_resolver(store)), store=store)) as url:
        yield url, loader


def test_ollama_counts_the_whole_prompt_on_a_miss_and_a_hit(live) -> None:
    url, loader = live
    client = ollama.Client(host=url, timeout=30)
    miss = client.chat(model=DEFAULT, messages=MESSAGES)
    expected = len(loader.last().chat_ids(MESSAGES))  # the tokenizer's count of the templated prompt
    assert miss.prompt_eval_count == expected
    hit = client.chat(model=DEFAULT, messages=MESSAGES)
    assert hit.prompt_eval_count == expected
    streamed = list(client.chat(model=DEFAULT, messages=MESSAGES, stream=True))[-1]
    assert streamed.done and streamed.prompt_eval_count == expected


def test_ollama_reports_the_cached_part_beside_the_count(live) -> None:
    url, loader = live
    body = {"model": DEFAULT, "messages": MESSAGES, "stream": False}
    miss = httpx.post(f"{url}/api/chat", json=body, timeout=30).json()
    expected = len(loader.last().chat_ids(MESSAGES))
    assert (miss["prompt_eval_count"], miss["prompt_eval_cached_count"]) == (expected, 0)
    hit = httpx.post(f"{url}/api/chat", json=body, timeout=30).json()
    assert hit["prompt_eval_count"] == expected
    assert 0 < hit["prompt_eval_cached_count"] <= expected  # the fake's prefix cache hit this time


def test_ollama_generate_counts_a_partly_cached_prompt(live) -> None:
    url, loader = live

    def generate(prompt: str) -> dict:
        body = {"model": DEFAULT, "prompt": prompt, "raw": True, "stream": False, "options": {"num_predict": 3}}
        return httpx.post(f"{url}/api/generate", json=body, timeout=30).json()

    first, second = generate("abcdefgh"), generate("abcdXYZW12")
    tokenizer = loader.last().tokenizer
    assert first["prompt_eval_count"] == len(tokenizer.encode("abcdefgh", add_bos=True))
    assert second["prompt_eval_count"] == len(tokenizer.encode("abcdXYZW12", add_bos=True))
    assert second["prompt_eval_cached_count"] == 5  # bos + "abcd" were already there


def test_openai_usage_counts_the_whole_prompt_and_the_cached_part(live) -> None:
    url, loader = live
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
    miss = client.chat.completions.create(model=DEFAULT, messages=MESSAGES, max_tokens=5)
    expected = len(loader.last().chat_ids(MESSAGES))
    assert miss.usage.prompt_tokens == expected
    assert miss.usage.prompt_tokens_details.cached_tokens == 0
    hit = client.chat.completions.create(model=DEFAULT, messages=MESSAGES, max_tokens=5)
    assert hit.usage.prompt_tokens == expected
    assert 0 < hit.usage.prompt_tokens_details.cached_tokens <= expected
