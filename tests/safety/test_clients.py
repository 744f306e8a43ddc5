"""The official `openai` and `ollama` clients read a guard's refusal as it is meant: finish_reason/done_reason
"content_filter", the categories in our extra field where the client keeps unknown fields."""

from __future__ import annotations

import ollama
import openai
import pytest
from fake_guards import UNSAFE, MarkerGuard, pipeline

from llamarun.bench.serving import serve_in_thread

pytestmark = pytest.mark.timeout(120)
MODEL = "fake-clients"


@pytest.fixture
def url(make_app, loader):
    loader.per_model["fake-unsafe-reply"] = {"reply": "Fine. The BOMB goes " + "here " * 40}
    guard = MarkerGuard(dict(UNSAFE), name="llama_guard")
    with serve_in_thread(make_app(pipeline((guard, "block"), stream_every=4, hold_back=2))) as base:
        yield base


def test_openai_client_sees_content_filter(url) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
    whole = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "bomb?"}])
    assert whole.choices[0].finish_reason == "content_filter"
    assert whole.model_extra["llamarun_guard"]["categories"] == ["S9"]
    chunks = list(client.chat.completions.create(model="fake-unsafe-reply", stream=True,
                                                 messages=[{"role": "user", "content": "go on"}]))
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish[0].choices[0].finish_reason == "content_filter"
    assert finish[0].model_extra["llamarun_guard"]["verdicts"][0]["kind"] == "output"
    assert "BOMB" not in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_ollama_client_sees_content_filter(url) -> None:
    client = ollama.Client(host=url, timeout=30)
    whole = client.chat(model=MODEL, messages=[{"role": "user", "content": "a hateword"}])
    assert whole.done_reason == "content_filter" and whole.message.content.startswith("Sorry")
    parts = list(client.chat(model="fake-unsafe-reply", messages=[{"role": "user", "content": "go"}], stream=True))
    assert parts[-1].done_reason == "content_filter"
    assert "BOMB" not in "".join(p.message.content for p in parts)
    gen = client.generate(model=MODEL, prompt="bomb")
    assert gen.done_reason == "content_filter"
