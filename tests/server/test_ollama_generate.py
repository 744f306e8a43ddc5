"""Ollama's /api/generate and /api/chat on fake models: wire format, parameters, streaming, keep_alive."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from conftest import DEFAULT, wait_until
from fake_llm import DEFAULT_REPLY, ByteTokenizer

pytestmark = pytest.mark.timeout(60)
TIMING_FIELDS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                 "eval_count", "eval_duration")


def ndjson_lines(response) -> list[dict]:
    return [json.loads(line) for line in response.iter_lines() if line.strip()]


def test_generate_whole_answer_has_ollamas_fields(client, loader) -> None:
    r = client.post("/api/generate", json={"model": "smollm2", "prompt": "Why?", "system": "Be brief.",
                                           "stream": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "smollm2" and body["response"] == DEFAULT_REPLY
    assert body["done"] is True and body["done_reason"] == "stop"
    assert dt.datetime.fromisoformat(body["created_at"]).tzinfo is not None
    for field in TIMING_FIELDS:
        assert isinstance(body[field], int) and body[field] >= 0, field
    assert body["eval_count"] == len(DEFAULT_REPLY.encode())
    assert body["total_duration"] >= body["eval_duration"] > 0
    assert body["load_duration"] > 0  # this request waited for the first load
    llm = loader.last()
    call = llm.calls[-1]
    expected = llm.chat_ids([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}])
    assert call.prompt_ids == expected
    assert body["prompt_eval_count"] == len(expected)
    assert body["prompt_eval_cached_count"] == 0  # nothing cached on the first request
    assert body["context"] == expected + list(DEFAULT_REPLY.encode())


def test_generate_streams_ndjson_pieces_that_add_up(client) -> None:
    with client.stream("POST", "/api/generate", json={"model": DEFAULT, "prompt": "Hi"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = ndjson_lines(r)
    assert len(lines) > 5
    assert all(line["done"] is False for line in lines[:-1])
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    assert all(f in lines[-1] for f in TIMING_FIELDS)
    assert "".join(line["response"] for line in lines) == DEFAULT_REPLY
    assert not any("\ufffd" in line["response"] for line in lines)  # a split UTF-8 character waits


def test_generate_raw_and_context(client, loader) -> None:
    r = client.post("/api/generate", json={"model": DEFAULT, "prompt": "abc", "raw": True, "stream": False,
                                           "system": "ignored when raw"})
    assert r.status_code == 200
    tok = ByteTokenizer()
    assert loader.last().calls[-1].prompt_ids == tok.encode("abc", add_bos=True)
    context = r.json()["context"]
    r = client.post("/api/generate", json={"model": DEFAULT, "prompt": "more", "raw": True, "stream": False,
                                           "context": context})
    assert r.status_code == 200
    ids = loader.last().calls[-1].prompt_ids
    assert ids == context + tok.encode("more")  # the continuation keeps a single bos, at the start


def test_options_become_sampling_params(client, loader) -> None:
    options = {"temperature": 0.3, "top_k": 7, "top_p": 0.5, "min_p": 0.05, "repeat_penalty": 1.3,
               "repeat_last_n": 32, "presence_penalty": 0.4, "frequency_penalty": 0.2, "seed": 11,
               "stop": ["au"], "num_predict": 100, "num_ctx": 300, "mirostat": 0, "num_thread": 2}
    body = {"model": DEFAULT, "prompt": "x", "options": options, "stream": False}
    r = client.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    llm = loader.last()
    p = llm.calls[-1].params
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.3, 7, 0.5, 0.05)
    penalties = (p.repetition_penalty, p.repeat_last_n, p.presence_penalty, p.frequency_penalty)
    assert penalties == (1.3, 32, 0.4, 0.2)
    assert (p.seed, p.stop, p.max_tokens) == (11, ("au",), 100)
    assert llm.context_length == 300  # num_ctx loaded the model with that context
    assert r.json()["response"] == f"{DEFAULT_REPLY} [seed 11]".split("au")[0]  # cut at the stop string


def test_defaults_are_ollamas(client, loader) -> None:
    assert client.post("/api/chat", json={"model": DEFAULT, "stream": False,
                                          "messages": [{"role": "user", "content": "x"}]}).status_code == 200
    p = loader.last().calls[-1].params
    assert (p.temperature, p.top_k, p.top_p, p.repetition_penalty, p.repeat_last_n) == (0.8, 40, 0.9, 1.1, 64)
    # No num_predict: the limit is the room left in the context.
    assert p.max_tokens == loader.last().context_length - len(loader.last().calls[-1].prompt_ids)


@pytest.mark.parametrize("num_predict, count, reason", [(5, 5, "length"), (-1, None, "stop"),
                                                        (-2, None, "stop"), (10**12, None, "stop")])
def test_num_predict(client, num_predict, count, reason) -> None:
    r = client.post("/api/generate", json={"model": DEFAULT, "prompt": "x", "stream": False,
                                           "options": {"num_predict": num_predict}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["eval_count"] == (count or len(DEFAULT_REPLY.encode()))
    assert body["done_reason"] == reason


def test_chat_whole_and_streamed_agree(client, loader) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
                {"role": "tool", "content": "42", "tool_name": "f"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {"model": DEFAULT, "messages": messages, "tools": tools, "stream": False}
    r = client.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == {"role": "assistant", "content": DEFAULT_REPLY}
    assert body["done"] is True and all(f in body for f in TIMING_FIELDS)
    seen, seen_tools = loader.last().messages_seen[-1]
    assert seen_tools == tools
    assert seen[2]["tool_calls"][0]["function"] == {"name": "f", "arguments": {"a": 1}}
    assert seen[3] == {"role": "tool", "content": "42", "name": "f"}
    with client.stream("POST", "/api/chat", json={"model": DEFAULT, "messages": messages}) as r:
        lines = ndjson_lines(r)
    assert "".join(line["message"]["content"] for line in lines) == DEFAULT_REPLY
    assert all(line["message"]["role"] == "assistant" for line in lines)
    assert [line["done"] for line in lines].count(True) == 1 and lines[-1]["done"]
    # the same prompt hit the prefix cache: the count stays the whole prompt, the cached part is told apart
    assert lines[-1]["prompt_eval_count"] == body["prompt_eval_count"]
    assert lines[-1]["prompt_eval_cached_count"] > body["prompt_eval_cached_count"]


def test_logprobs(client) -> None:
    r = client.post("/api/chat", json={"model": DEFAULT, "messages": [{"role": "user", "content": "x"}],
                                       "logprobs": True, "top_logprobs": 3, "stream": False,
                                       "options": {"num_predict": 4}})
    assert r.status_code == 200, r.text
    lps = r.json()["logprobs"]
    assert [lp["token"] for lp in lps] == list(DEFAULT_REPLY[:4])
    assert all(len(lp["top_logprobs"]) == 3 for lp in lps)
    assert all(lp["top_logprobs"][0]["logprob"] == lp["logprob"] for lp in lps)
    with client.stream("POST", "/api/generate", json={"model": DEFAULT, "prompt": "x", "logprobs": True,
                                                       "options": {"num_predict": 3}}) as r:
        lines = ndjson_lines(r)
    assert sum(len(line["logprobs"]) for line in lines) == 3


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client, loader) -> None:
    r = client.post("/api/generate", json={"model": DEFAULT})
    assert r.status_code == 200 and r.json()["done_reason"] == "load" and r.json()["response"] == ""
    assert [m["name"] for m in client.get("/api/ps").json()["models"]] == [DEFAULT]
    r = client.post("/api/chat", json={"model": DEFAULT, "messages": [], "keep_alive": 0})
    assert r.status_code == 200 and r.json()["done_reason"] == "unload"
    assert r.json()["message"] == {"role": "assistant", "content": ""}
    assert client.get("/api/ps").json()["models"] == []
    assert loader.last().shut_down


def test_keep_alive_zero_unloads_after_the_request(client, loader) -> None:
    r = client.post("/api/chat", json={"model": DEFAULT, "messages": [{"role": "user", "content": "x"}],
                                       "stream": False, "keep_alive": "0s"})
    assert r.status_code == 200 and r.json()["message"]["content"] == DEFAULT_REPLY
    assert wait_until(lambda: client.get("/api/ps").json()["models"] == [])
    assert loader.last().shut_down


def test_keep_alive_durations(client, loader) -> None:
    client.post("/api/generate", json={"model": DEFAULT, "keep_alive": "1h30m"})
    expires = client.get("/api/ps").json()["models"][0]["expires_at"]
    left = dt.datetime.fromisoformat(expires).timestamp() - time.time()
    assert 5390 < left <= 5400
    client.post("/api/generate", json={"model": DEFAULT, "keep_alive": -1})
    expires = client.get("/api/ps").json()["models"][0]["expires_at"]
    assert dt.datetime.fromisoformat(expires).year > 2100
    client.post("/api/generate", json={"model": DEFAULT, "keep_alive": "300ms"})
    assert client.get("/api/ps").json()["models"]  # still loaded right after
    assert wait_until(lambda: client.get("/api/ps").json()["models"] == [], timeout=5)
    assert len(loader.instances) == 1 and loader.instances[0].shut_down
