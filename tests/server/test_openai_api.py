"""OpenAI's /v1 endpoints against fake models: wire format, defaults, n, logprobs, usage, SSE."""

from __future__ import annotations

import json

import pytest
from conftest import DEFAULT
from fake_llm import DEFAULT_REPLY, ByteTokenizer
from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(60)
USER = [{"role": "user", "content": "hi"}]
REPLY_TOKENS = len(DEFAULT_REPLY.encode())


def sse_events(response) -> list:
    """Parsed `data:` payloads; the final `[DONE]` stays a string."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", line
    return events


def test_chat_completion_whole(client: TestClient, loader) -> None:
    r = client.post("/v1/chat/completions", json={"model": DEFAULT, "messages": USER})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == DEFAULT and isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": DEFAULT_REPLY},
                                "logprobs": None, "finish_reason": "stop"}]
    prompt = loader.last().calls[-1].prompt_ids
    assert body["usage"]["prompt_tokens"] == len(prompt)
    assert body["usage"]["completion_tokens"] == REPLY_TOKENS
    assert body["usage"]["total_tokens"] == len(prompt) + REPLY_TOKENS


def test_openai_defaults_not_ollamas(client: TestClient, loader) -> None:
    client.post("/v1/chat/completions", json={"model": DEFAULT, "messages": USER})
    p = loader.last().calls[-1].params
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty) == (1.0, 1.0, 0, 0.0, 1.0)
    assert (p.presence_penalty, p.frequency_penalty, p.seed, p.stop, p.logprobs) == (0.0, 0.0, None, (), None)


def test_parameters_map(client: TestClient, loader) -> None:
    r = client.post("/v1/chat/completions", json={
        "model": DEFAULT, "messages": [{"role": "developer", "content": [{"type": "text", "text": "Be "},
                                                                         {"type": "text", "text": "kind"}]},
                                       *USER],
        "temperature": 0.2, "top_p": 0.7, "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 5,
        "stop": "au", "max_completion_tokens": 50, "top_k": 9, "min_p": 0.1, "repetition_penalty": 1.2,
        "user": "me", "unknown_field": {"is": "ignored"}})
    assert r.status_code == 200, r.text
    llm = loader.last()
    p = llm.calls[-1].params
    assert (p.temperature, p.top_p, p.presence_penalty, p.frequency_penalty) == (0.2, 0.7, 0.5, -0.5)
    assert (p.seed, p.stop, p.max_tokens) == (5, ("au",), 50)
    assert (p.top_k, p.min_p, p.repetition_penalty) == (9, 0.1, 1.2)
    assert llm.messages_seen[-1][0][0] == {"role": "system", "content": "Be kind"}
    assert r.json()["choices"][0]["message"]["content"] == DEFAULT_REPLY.split("au")[0]


def test_max_tokens_gives_length(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"model": DEFAULT, "messages": USER, "max_tokens": 4})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] == DEFAULT_REPLY[:4]
    assert r.json()["usage"]["completion_tokens"] == 4


def test_chat_stream(client: TestClient) -> None:
    with client.stream("POST", "/v1/chat/completions", json={"model": DEFAULT, "messages": USER,
                                                             "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == DEFAULT_REPLY
    assert [c["choices"][0]["finish_reason"] for c in chunks].count("stop") == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"][0]["delta"] == {}


def test_chat_stream_include_usage(client: TestClient) -> None:
    with client.stream("POST", "/v1/chat/completions", json={
            "model": DEFAULT, "messages": USER, "stream": True, "max_tokens": 6,
            "stream_options": {"include_usage": True}}) as r:
        events = sse_events(r)
    chunks = events[:-1]
    assert all(c["usage"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 6
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 6


def test_n_choices_with_seeds(client: TestClient, loader) -> None:
    r = client.post("/v1/chat/completions", json={"model": DEFAULT, "messages": USER, "n": 3, "seed": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in body["choices"]]
    assert texts == [f"{DEFAULT_REPLY} [seed {s}]" for s in (7, 8, 9)]
    assert body["usage"]["prompt_tokens"] == len(loader.last().calls[-1].prompt_ids)  # counted once
    assert body["usage"]["completion_tokens"] == sum(len(t.encode()) for t in texts)
    with client.stream("POST", "/v1/chat/completions", json={"model": DEFAULT, "messages": USER, "n": 2,
                                                             "stream": True, "seed": 1}) as r:
        chunks = sse_events(r)[:-1]
    for i, seed in ((0, 1), (1, 2)):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert "".join(c["delta"].get("content", "") for c in mine) == f"{DEFAULT_REPLY} [seed {seed}]"
        assert [c["finish_reason"] for c in mine][-1] == "stop"


def test_chat_logprobs(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"model": DEFAULT, "messages": USER, "max_tokens": 5,
                                                  "logprobs": True, "top_logprobs": 2})
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == list(DEFAULT_REPLY[:5])
    assert [t["bytes"] for t in content] == [[b] for b in DEFAULT_REPLY[:5].encode()]
    assert all(len(t["top_logprobs"]) == 2 for t in content)
    assert all(t["top_logprobs"][0]["logprob"] == t["logprob"] for t in content)
    body = {"model": DEFAULT, "messages": USER, "max_tokens": 3, "stream": True, "logprobs": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        chunks = sse_events(r)[:-1]
    streamed = [t for c in chunks if c["choices"][0]["logprobs"]
                for t in c["choices"][0]["logprobs"]["content"]]
    assert [t["token"] for t in streamed] == list(DEFAULT_REPLY[:3])
    assert all(t["top_logprobs"] == [] for t in streamed)  # top_logprobs not asked


def test_completions(client: TestClient, loader) -> None:
    tok = ByteTokenizer()
    r = client.post("/v1/completions", json={"model": DEFAULT, "prompt": "Once", "max_tokens": 5})
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": DEFAULT_REPLY[:5], "logprobs": None,
                                "finish_reason": "length"}]
    assert loader.last().calls[-1].prompt_ids == tok.encode("Once", add_bos=True)  # no chat template
    r = client.post("/v1/completions", json={"model": DEFAULT, "prompt": ["a", "bb"], "n": 2, "seed": 3,
                                             "max_tokens": 200, "echo": True})
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    expected = [f"{p}{DEFAULT_REPLY} [seed {s}]" for p in ("a", "bb") for s in (3, 4)]
    assert [c["text"] for c in choices] == expected
    assert r.json()["usage"]["prompt_tokens"] == 2 + 3  # each prompt once, bos included
    r = client.post("/v1/completions", json={"model": DEFAULT, "prompt": [256, 72, 105], "max_tokens": 2,
                                             "logprobs": 1})
    assert loader.last().calls[-1].prompt_ids == [256, 72, 105]
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"] == ["H", "e"] and lp["text_offset"] == [0, 1] and lp["top_logprobs"] == [{"H": -0.05},
                                                                                                 {"e": -0.3}]


def test_completions_stream(client: TestClient) -> None:
    body = {"model": DEFAULT, "prompt": "x", "stream": True, "echo": True,
            "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=body) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "x" + DEFAULT_REPLY
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == REPLY_TOKENS


def test_models(client: TestClient) -> None:
    client.post("/api/generate", json={"model": "fake-loaded-only"})
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    ids = [m["id"] for m in data["data"]]
    assert ids == [DEFAULT, "fake-loaded-only"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in data["data"])
    assert client.get(f"/v1/models/{DEFAULT}").json()["id"] == DEFAULT
    r = client.get("/v1/models/missing:1b")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_message_names_and_tool_call_ids_reach_the_template(client, loader) -> None:
    messages = [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi", "name": "ann"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
                {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "f"}]
    r = client.post("/v1/chat/completions", json={"model": DEFAULT, "messages": messages})
    assert r.status_code == 200, r.text
    seen, _ = loader.last().messages_seen[-1]
    assert [m["role"] for m in seen] == ["system", "user", "assistant", "tool"]
    assert seen[1]["name"] == "ann" and seen[3]["name"] == "f" and seen[3]["tool_call_id"] == "c1"
    assert seen[2]["tool_calls"] == [{"type": "function", "id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}]
