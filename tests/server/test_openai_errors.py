"""Every bad OpenAI request is a 4xx with `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import pytest
from conftest import DEFAULT
from fastapi.testclient import TestClient

from llamarun.errors import LlamarunError
from llamarun.sampling.params import SamplingParamsError
from llamarun.server.errors import from_llamarun_error

pytestmark = pytest.mark.timeout(60)
USER = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def chat(**fields) -> dict:
    return {"model": DEFAULT, "messages": USER, **fields}


CASES = [
    (CHAT, b'{"model": ', 400, None, "invalid JSON"),
    (CHAT, b"null", 400, None, "JSON object"),
    (CHAT, {"messages": USER}, 400, "model", "model"),
    (CHAT, {"model": DEFAULT}, 400, "messages", "messages"),
    (CHAT, {"model": DEFAULT, "messages": []}, 400, "messages", "messages"),
    (CHAT, chat(messages=[{"role": "robot", "content": "x"}]), 400, "messages.0.role", "role"),
    (CHAT, chat(temperature=3), 400, "temperature", "temperature"),
    (CHAT, chat(temperature="warm"), 400, "temperature", "temperature"),
    (CHAT, chat(top_p=0), 400, "top_p", "top_p"),
    (CHAT, chat(presence_penalty=5), 400, "presence_penalty", "presence_penalty"),
    (CHAT, chat(max_tokens=0), 400, "max_tokens", "max_tokens"),
    (CHAT, chat(max_tokens=-5), 400, "max_tokens", "max_tokens"),
    (CHAT, chat(max_tokens=10**9), 400, "max_tokens", "context holds"),
    (CHAT, chat(max_tokens=2**70), 400, "max_tokens", "max_tokens"),
    (CHAT, chat(max_tokens=5, max_completion_tokens=6), 400, "max_tokens", "disagree"),
    (CHAT, chat(n=0), 400, "n", "n"),
    (CHAT, chat(n=1000), 400, "n", "n"),
    (CHAT, chat(seed=-1), 400, "seed", "seed"),
    (CHAT, chat(stop=["a", ""]), 400, "stop", "stop"),
    (CHAT, chat(stop=[1]), 400, "stop", "stop"),
    (CHAT, chat(top_k=-1), 400, "top_k", "top_k"),
    (CHAT, chat(min_p=2), 400, "min_p", "min_p"),
    (CHAT, chat(repetition_penalty=0), 400, "repetition_penalty", "repetition_penalty"),
    (CHAT, chat(max_completion_tokens=0), 400, "max_tokens", "max_tokens"),
    (CHAT, chat(top_logprobs=3), 400, "top_logprobs", "logprobs"),
    (CHAT, chat(logprobs=True, top_logprobs=50), 400, "top_logprobs", "top_logprobs"),
    (CHAT, chat(response_format={"type": "xml"}), 400, "response_format", "not supported"),
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {}}), 400, "response_format",
     "json_schema.schema"),
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "(ab"}}}}}), 400, "response_format",
     "JSON schema cannot be enforced"),
    (CHAT, chat(logit_bias={"50": 10}), 400, "logit_bias", "logit_bias"),
    (CHAT, chat(tool_choice="required"), 400, "tool_choice", "tool_choice"),
    (CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     400, "messages.0.content", "image_url"),
    (CHAT, chat(messages=[{"role": "user", "content": "x" * 600}]), 400, "messages", "context holds"),
    (CHAT, chat(messages=[{"role": "user", "content": "BREAK THE TEMPLATE"}]), 400, "messages", "template"),
    (CHAT, chat(model="gpt-4o"), 404, "model", "not found"),
    ("/v1/completions", {"model": DEFAULT}, 400, "prompt", "prompt"),
    ("/v1/completions", {"model": DEFAULT, "prompt": []}, 400, "prompt", "empty"),
    ("/v1/completions", {"model": DEFAULT, "prompt": [[]]}, 400, "prompt", "empty"),
    ("/v1/completions", {"model": DEFAULT, "prompt": [1, "a"]}, 400, "prompt", "prompt"),
    ("/v1/completions", {"model": DEFAULT, "prompt": [70000]}, 400, "prompt", "vocabulary"),
    ("/v1/completions", {"model": DEFAULT, "prompt": "x", "suffix": "y"}, 400, "suffix", "suffix"),
    ("/v1/completions", {"model": DEFAULT, "prompt": "x", "best_of": 3}, 400, "best_of", "best_of"),
    ("/v1/completions", {"model": DEFAULT, "prompt": "x", "echo": True, "logprobs": 1}, 400, "echo", "echo"),
    ("/v1/completions", {"model": DEFAULT, "prompt": "x", "logprobs": 21}, 400, "logprobs", "logprobs"),
    ("/v1/embeddings", {"model": DEFAULT, "input": "x", "dimensions": 100000}, 400, "dimensions", "dimensions"),
    ("/v1/embeddings", {"model": DEFAULT, "input": [[1, "a"]]}, 400, "input", "input"),
]


@pytest.mark.parametrize("path, body, status, param, fragment", CASES)
def test_bad_requests_answer_in_openais_shape(client: TestClient, path: str, body, status: int,
                                               param: str | None, fragment: str) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert fragment in error["message"], error
    assert client.post(CHAT, json=chat()).status_code == 200  # the server carries on


def test_wrong_method(client: TestClient) -> None:
    r = client.get(CHAT)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_only_sampling_errors_name_a_param() -> None:
    err = SamplingParamsError("a stop string is empty", "remove it", param="stop")
    assert from_llamarun_error(err).param == "stop"
    # words that happen to be field names in another error's text do not make it about that field
    plain = from_llamarun_error(LlamarunError("the seed of top_p is temperature", "stop"))
    assert (plain.status, plain.param) == (400, None)
