"""Guards around the chat endpoints of both APIs, whole and streamed, through the real app over fake models.

Block: a refusal the client can tell apart (OpenAI finish_reason "content_filter" with `llamarun_guard`,
Ollama done_reason "content_filter" with `guard`), and a blocked input never reaches the model. Warn: the
answer as usual, with the verdicts in the same field. Off: as if there were no guard.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fake_guards import UNSAFE, MarkerGuard, RaisingGuard, pipeline
from fastapi.testclient import TestClient

MODEL = "fake-chat"
UNSAFE_REPLY = "Sure. First you take the BOMB parts and then " + "more words " * 30


def sse_events(text: str) -> list[dict[str, Any]]:
    out = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert out[-1] == "[DONE]"
    return [json.loads(e) for e in out[:-1]]


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def openai_chat(client: TestClient, content: str, **extra: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": content}],
                                                     **extra})


def ollama_chat(client: TestClient, content: str, **extra: Any) -> Any:
    return client.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": content}],
                                          **extra})


@pytest.fixture
def blocking(make_app, marker):
    with TestClient(make_app(pipeline((marker, "block"), stream_every=8, hold_back=4))) as c:
        yield c


def test_openai_blocked_input_is_a_content_filter_refusal_and_never_reaches_the_model(blocking, loader) -> None:
    r = openai_chat(blocking, "how do I build a bomb?")
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"].startswith("Sorry, I can't help with that.")
    assert body["llamarun_guard"]["action"] == "block" and body["llamarun_guard"]["categories"] == ["S9"]
    assert body["llamarun_guard"]["verdicts"][0] | {"score": None} == {
        "guard": "llama_guard", "kind": "input", "action": "block", "safe": False, "categories": ["S9"],
        "score": None, "detail": "found S9"}
    assert all(m.calls == [] for m in loader.instances), "a blocked request reached the model"
    assert body["usage"]["completion_tokens"] == 0


def test_openai_blocked_input_streamed(blocking, loader) -> None:
    r = openai_chat(blocking, "bomb please", stream=True, n=2)
    events = sse_events(r.text)
    last = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert sorted(e["choices"][0]["index"] for e in last) == [0, 1]
    assert all(e["choices"][0]["finish_reason"] == "content_filter" for e in last)
    assert all(e["llamarun_guard"]["categories"] == ["S9"] for e in last)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text.count("Sorry, I can't help with that.") == 2
    assert all(m.calls == [] for m in loader.instances)


def test_ollama_blocked_input_whole_and_streamed(blocking, loader) -> None:
    whole = ollama_chat(blocking, "a HATEWORD here", stream=False).json()
    assert whole["done"] and whole["done_reason"] == "content_filter"
    assert whole["message"]["content"].startswith("Sorry") and whole["guard"]["categories"] == ["S10"]
    lines = ndjson(ollama_chat(blocking, "a HATEWORD here").text)
    assert lines[-1]["done_reason"] == "content_filter" and lines[-1]["guard"]["action"] == "block"
    gen = blocking.post("/api/generate", json={"model": MODEL, "prompt": "bomb", "stream": False}).json()
    assert gen["done_reason"] == "content_filter" and gen["guard"]["categories"] == ["S9"]
    assert all(m.calls == [] for m in loader.instances)


def test_safe_requests_pass_untouched(blocking, loader) -> None:
    body = openai_chat(blocking, "hello there").json()
    assert body["choices"][0]["finish_reason"] == "stop" and "llamarun_guard" not in body
    assert body["choices"][0]["message"]["content"] == loader.last().reply
    lines = ndjson(ollama_chat(blocking, "hello there").text)
    assert "".join(x["message"]["content"] for x in lines) == loader.last().reply
    assert lines[-1]["done_reason"] == "stop" and "guard" not in lines[-1]


@pytest.mark.parametrize("stream", [False, True])
def test_an_unsafe_reply_is_cut_early_in_both_apis(make_app, marker, loader, stream: bool) -> None:
    loader.defaults["reply"] = UNSAFE_REPLY
    with TestClient(make_app(pipeline((marker, "block"), stream_every=8, hold_back=4))) as c:
        r = openai_chat(c, "tell me a story", stream=stream)
        if stream:
            events = sse_events(r.text)
            text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
            reason = [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1]
            guard = events[-1]["llamarun_guard"]
        else:
            body = r.json()
            text, reason = body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"]
            guard = body["llamarun_guard"]
        assert reason == "content_filter" and guard["verdicts"][0]["kind"] == "output"
        assert "BOMB" not in text and "Sorry, I can't help with that." in text
        model = loader.last()
        assert model.calls[0].aborted, "the engine request was not cancelled"
        assert model._generated < UNSAFE_REPLY.index("BOMB") + 4 + 16, "generation ran on past the cut"
        lines = ndjson(ollama_chat(c, "tell me a story", stream=stream).text)
        assert lines[-1]["done_reason"] == "content_filter" and lines[-1]["guard"]["categories"] == ["S9"]
        assert "BOMB" not in "".join(x["message"]["content"] for x in lines)


@pytest.mark.parametrize("stream", [False, True])
def test_warn_mode_answers_and_annotates(make_app, loader, stream: bool, caplog) -> None:
    loader.defaults["reply"] = "A reply that mentions a hateword once."
    guard = MarkerGuard(dict(UNSAFE), name="llama_guard")
    with TestClient(make_app(pipeline((guard, "warn"), stream_every=4, hold_back=2))) as c:
        r = openai_chat(c, "say a bomb word", stream=stream)
        if stream:
            events = sse_events(r.text)
            text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
            guard_json = events[-1]["llamarun_guard"]
        else:
            text, guard_json = r.json()["choices"][0]["message"]["content"], r.json()["llamarun_guard"]
        assert text == loader.defaults["reply"]
        assert guard_json["action"] == "warn"
        assert [(v["kind"], v["categories"]) for v in guard_json["verdicts"]] == [("input", ["S9"]),
                                                                                  ("output", ["S10"])]
        last = ndjson(ollama_chat(c, "bomb", stream=stream).text)[-1]
        assert last["done_reason"] == "stop" and last["guard"]["action"] == "warn"
    assert any("guard llama_guard: warn input (S9)" in rec.getMessage() for rec in caplog.records)


def test_off_is_as_if_there_were_no_guard(make_app, loader, marker) -> None:
    with TestClient(make_app(pipeline((marker, "off")))) as c:
        body = openai_chat(c, "bomb").json()
        assert body["choices"][0]["finish_reason"] == "stop" and "llamarun_guard" not in body
    assert marker.seen == [] and len(loader.last().calls) == 1


def test_a_failing_guard_is_a_503_naming_it_not_a_pass(make_app, loader) -> None:
    with TestClient(make_app(pipeline((RaisingGuard(name="llama_guard"), "block")))) as c:
        r = openai_chat(c, "hello")
        assert r.status_code == 503 and "'llama_guard' failed" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "guard_unavailable"
        r = ollama_chat(c, "hello")
        assert r.status_code == 503 and "'llama_guard' failed" in r.json()["error"]
    assert all(m.calls == [] for m in loader.instances)


def test_a_guard_failing_on_the_output_ends_the_stream_with_an_error(make_app, loader) -> None:
    class OutputBreaks(MarkerGuard):
        async def check(self, subject):
            if subject.kind == "output":
                raise RuntimeError("guard model gone")
            return await super().check(subject)

    with TestClient(make_app(pipeline((OutputBreaks({}, name="g"), "block"), stream_every=4))) as c:
        events = sse_events(openai_chat(c, "hi", stream=True).text)
        assert "'g' failed" in events[-1]["error"]["message"]
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")) == ""
        r = openai_chat(c, "hi")
        assert r.status_code == 503


def test_completions_are_guarded_too(blocking, loader) -> None:
    body = blocking.post("/v1/completions", json={"model": MODEL, "prompt": "a bomb"}).json()
    assert body["choices"][0]["finish_reason"] == "content_filter" and body["llamarun_guard"]["categories"] == ["S9"]
    assert all(m.calls == [] for m in loader.instances)


def test_guard_counts_in_metrics(blocking, loader) -> None:
    from prometheus_text import at, parse_metrics

    openai_chat(blocking, "bomb")
    openai_chat(blocking, "hello")
    samples = parse_metrics(blocking.get("/metrics").text)
    assert at(samples, "llamarun_guard_verdicts_total", guard="llama_guard", kind="input", category="S9",
              action="block") == 1
    assert at(samples, "llamarun_guard_verdicts_total", guard="llama_guard", kind="input", category="none",
              action="pass") == 1
    assert at(samples, "llamarun_guard_verdicts_total", guard="llama_guard", kind="output", category="none",
              action="pass") == 1  # the safe reply, counted once however many checks the stream took
    assert at(samples, "llamarun_guard_check_seconds_count", guard="llama_guard") == 3
    assert at(samples, "llamarun_generations_total", model=MODEL, api="openai", finish_reason="content_filter") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_responses_api_reports_an_incomplete_content_filter(blocking, loader, stream: bool) -> None:
    r = blocking.post("/v1/responses", json={"model": MODEL, "input": "a bomb", "stream": stream})
    if stream:
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1]["type"] == "response.incomplete"
        body = events[-1]["response"]
    else:
        body = r.json()
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "content_filter"}
    assert body["output"][0]["content"][0]["text"].startswith("Sorry") and body["llamarun_guard"]["action"] == "block"
    assert all(m.calls == [] for m in loader.instances)
