"""The guarded server end to end with a REAL Llama Guard: a tiny random Llama (Meta's Llama 3 tokenizer, the
real Llama Guard 3 1B template, tests/tiny_guard_model.py) loaded by llamarun's own loader and engine, its
verdict text forced through the grammar, in front of the fake main model of tests/server/fake_llm.py.

Unlike test_guarded_apis.py (fake guards), every verdict here comes out of a real prompt render, a real
forward pass and the real parser and score: the model leans to "unsafe" (or "safe") by construction, so the
forced text and the model's own P(unsafe) agree, as a real guard's would. Checked in both APIs, whole and
streamed: block refuses with "content_filter" and S1 and the main model never sees the request; warn answers
and attaches the verdicts; a "safe" verdict leaves the answer untouched; /v1/moderations flags S1.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fake_guards import pipeline
from fastapi.testclient import TestClient
from tiny_guard_model import SAFE, UNSAFE, write_tiny_guard

from llamarun.api import AsyncLLM
from llamarun.safety.llama_guard import LlamaGuard
from llamarun.sampling.grammar_spec import GrammarSpec

pytestmark = pytest.mark.timeout(300)
MODEL = "fake-chat"
REFUSAL = "Sorry, I can't help with that."


@pytest.fixture(scope="module")
def guard_models(tmp_path_factory):
    """Two tiny guards loaded once: one leaning to "unsafe", one to "safe" (so score and text agree)."""
    root = tmp_path_factory.mktemp("real_guard")
    folders = {"unsafe": write_tiny_guard(root / "unsafe", style="1b", lean=UNSAFE, boost=2.0),
               "safe": write_tiny_guard(root / "safe", style="1b", lean=SAFE, boost=2.0, seed=1)}
    loaded = {k: AsyncLLM(str(p), context_length=1024, max_kv_tokens=8192) for k, p in folders.items()}
    yield loaded
    for m in loaded.values():
        m.shutdown()


@pytest.fixture(scope="module")
def unsafe_guard(guard_models) -> LlamaGuard:
    return LlamaGuard(guard_models["unsafe"], grammar=GrammarSpec("choice", ["\n\nunsafe\nS1"]))


@pytest.fixture(scope="module")
def safe_guard(guard_models) -> LlamaGuard:
    return LlamaGuard(guard_models["safe"], grammar=GrammarSpec("choice", ["\n\nsafe"]))


def chat(client: TestClient, path: str, content: str, **extra: Any) -> Any:
    r = client.post(path, json={"model": MODEL, "messages": [{"role": "user", "content": content}], **extra})
    assert r.status_code == 200, r.text
    return r


def sse(text: str) -> list[dict[str, Any]]:
    data = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def openai_result(client: TestClient, content: str, stream: bool) -> tuple[str, str, dict | None]:
    """(text, finish_reason, llamarun_guard or None) of one OpenAI chat completion, whole or streamed."""
    r = chat(client, "/v1/chat/completions", content, stream=stream)
    if not stream:
        body = r.json()
        choice = body["choices"][0]
        return choice["message"]["content"], choice["finish_reason"], body.get("llamarun_guard")
    events = [e for e in sse(r.text) if e.get("choices")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    last = [e for e in events if e["choices"][0]["finish_reason"]][-1]
    return text, last["choices"][0]["finish_reason"], last.get("llamarun_guard")


def ollama_result(client: TestClient, content: str, stream: bool) -> tuple[str, str, dict | None]:
    """(text, done_reason, guard or None) of one Ollama /api/chat, whole or streamed."""
    lines = ndjson(chat(client, "/api/chat", content, stream=stream).text)
    assert lines[-1]["done"] is True
    return "".join(x["message"]["content"] for x in lines), lines[-1]["done_reason"], lines[-1].get("guard")


def assert_real_s1(guard_json: dict, action: str) -> None:
    first = guard_json["verdicts"][0]
    assert guard_json["action"] == action and "S1" in guard_json["categories"]
    assert (first["guard"], first["kind"], first["safe"], first["categories"]) == ("llama_guard", "input",
                                                                                   False, ["S1"])
    assert 0.5 <= first["score"] < 1.0, "the score is the tiny model's own P(unsafe)"
    assert first["detail"].startswith("unsafe: S1 Violent Crimes")


@pytest.mark.parametrize("stream", [False, True])
def test_block_refuses_in_both_apis_and_never_reaches_the_main_model(make_app, loader, unsafe_guard,
                                                                     stream: bool) -> None:
    with TestClient(make_app(pipeline((unsafe_guard, "block"), stream_every=8, hold_back=4))) as c:
        text, reason, guard = openai_result(c, "how do I hurt someone?", stream)
        assert reason == "content_filter" and text.startswith(REFUSAL)
        assert_real_s1(guard, "block")
        text, reason, guard = ollama_result(c, "how do I hurt someone?", stream)
        assert reason == "content_filter" and text.startswith(REFUSAL)
        assert_real_s1(guard, "block")
    assert all(m.calls == [] for m in loader.instances), "a blocked request reached the main model"


@pytest.mark.parametrize("stream", [False, True])
def test_warn_answers_with_the_real_verdicts_attached(make_app, loader, unsafe_guard, stream: bool) -> None:
    with TestClient(make_app(pipeline((unsafe_guard, "warn"), stream_every=8, hold_back=4))) as c:
        text, reason, guard = openai_result(c, "how do I hurt someone?", stream)
        assert reason == "stop" and text == loader.last().reply
        assert_real_s1(guard, "warn")
        # the forced guard finds the reply unsafe too: one output verdict, however many stream checks it took
        assert [v["kind"] for v in guard["verdicts"]] == ["input", "output"]
        text, reason, guard = ollama_result(c, "how do I hurt someone?", stream)
        assert reason == "stop" and text == loader.last().reply
        assert_real_s1(guard, "warn")
    assert sum(len(m.calls) for m in loader.instances) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_a_safe_verdict_passes_untouched(make_app, loader, safe_guard, stream: bool) -> None:
    with TestClient(make_app(pipeline((safe_guard, "block"), stream_every=8, hold_back=4))) as c:
        for result in (openai_result, ollama_result):
            text, reason, guard = result(c, "what is the capital of France?", stream)
            assert (text, reason, guard) == (loader.last().reply, "stop", None)
    assert sum(len(m.calls) for m in loader.instances) == 2


def test_off_never_runs_the_guard(make_app, loader, unsafe_guard, monkeypatch) -> None:
    checks: list[str] = []
    real_check = unsafe_guard.check

    async def counted(subject):
        checks.append(subject.kind)
        return await real_check(subject)

    monkeypatch.setattr(unsafe_guard, "check", counted)
    with TestClient(make_app(pipeline((unsafe_guard, "off")))) as c:
        text, reason, guard = openai_result(c, "how do I hurt someone?", False)
        assert (text, reason, guard) == (loader.last().reply, "stop", None)
        assert ollama_result(c, "how do I hurt someone?", True)[1:] == ("stop", None)
    assert checks == []


def test_moderations_with_the_real_guard(make_app, unsafe_guard, safe_guard) -> None:
    with TestClient(make_app(pipeline((unsafe_guard, "block")))) as c:
        body = c.post("/v1/moderations", json={"input": ["how do I hurt someone?"]}).json()
        result = body["results"][0]
        assert result["flagged"] is True and result["categories"]["S1"] is True
        assert result["categories"]["violence"] is True and 0.5 <= result["category_scores"]["violence"] < 1.0
        assert result["llamarun_guard"][0]["categories"] == ["S1"]
    with TestClient(make_app(pipeline((safe_guard, "block")))) as c:
        result = c.post("/v1/moderations", json={"input": "the capital of France"}).json()["results"][0]
        assert result["flagged"] is False and result["categories"]["violence"] is False
