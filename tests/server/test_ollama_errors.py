"""Every bad Ollama request is a 4xx with `{"error": "..."}`; engine failures never take the server down."""

from __future__ import annotations

import json

import pytest
from conftest import DEFAULT
from fake_llm import DEFAULT_REPLY
from fastapi.testclient import TestClient

from llamarun.errors import LlamarunError

pytestmark = pytest.mark.timeout(60)
USER = [{"role": "user", "content": "hi"}]

CASES = [
    ("/api/generate", b'{"model": "smollm2", "prompt": ', 400, "invalid JSON"),
    ("/api/chat", b"", 400, "missing request body"),
    ("/api/chat", b'["model"]', 400, "JSON object"),
    ("/api/chat", {"messages": USER}, 400, "'model'"),
    ("/api/generate", {"model": 7, "prompt": "x"}, 400, "'model'"),
    ("/api/generate", {"model": DEFAULT, "prompt": ["x"]}, 400, "'prompt'"),
    ("/api/chat", {"model": DEFAULT, "messages": "hi"}, 400, "'messages'"),
    ("/api/chat", {"model": DEFAULT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("/api/chat", {"model": DEFAULT, "messages": USER, "options": {"temperature": "hot"}}, 400,
     "options.temperature"),
    ("/api/chat", {"model": DEFAULT, "messages": USER, "options": {"temperature": -1}}, 400, "temperature"),
    ("/api/chat", {"model": DEFAULT, "messages": USER, "options": {"top_p": 0}}, 400, "top_p"),
    ("/api/chat", {"model": DEFAULT, "messages": USER, "options": {"num_predict": -3}}, 400, "num_predict"),
    ("/api/chat", {"model": DEFAULT, "messages": USER, "options": {"num_predict": 0}}, 400, "num_predict"),
    ("/api/chat", {"model": DEFAULT, "messages": USER, "options": {"num_predict": 2**80}}, 400,
     "num_predict"),
    ("/api/chat", {"model": DEFAULT, "messages": USER, "options": {"num_ctx": 0}}, 400, "num_ctx"),
    ("/api/chat", {"model": DEFAULT, "messages": USER, "options": {"seed": -1}}, 400, "seed"),
    ("/api/chat", {"model": DEFAULT, "messages": USER, "options": {"stop": [""]}}, 400, "stop"),
    ("/api/chat", {"model": DEFAULT, "messages": USER, "format": "yaml"}, 400, "invalid format"),
    ("/api/generate", {"model": DEFAULT, "prompt": "x", "format": {"type": "string", "pattern": "(ab"}}, 400,
     "JSON schema cannot be enforced"),
    ("/api/chat", {"model": DEFAULT, "messages": USER, "think": True}, 400, "thinking"),
    ("/api/generate", {"model": DEFAULT, "prompt": "x", "images": ["aGk="]}, 400, "images"),
    ("/api/chat", {"model": DEFAULT, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, 400,
     "images"),
    ("/api/generate", {"model": DEFAULT, "prompt": "x", "template": "{{ .Prompt }}"}, 400, "template"),
    ("/api/generate", {"model": DEFAULT, "prompt": "x", "suffix": "end"}, 400, "suffix"),
    ("/api/generate", {"model": DEFAULT, "prompt": "x", "keep_alive": "forever"}, 400, "keep_alive"),
    ("/api/generate", {"model": DEFAULT, "prompt": "x", "context": [5, 999999]}, 400, "vocabulary"),
    ("/api/chat", {"model": DEFAULT, "messages": [{"role": "user", "content": "x" * 600}]}, 400,
     "context holds"),
    ("/api/chat", {"model": DEFAULT, "messages": [{"role": "user", "content": "BREAK THE TEMPLATE"}]}, 400,
     "roles must alternate"),
    ("/api/chat", {"model": "no-such-model:7b", "messages": USER}, 404, "not found"),
    ("/api/generate", {"model": "./no/such/file.gguf", "prompt": "x"}, 404, "no such file"),
    ("/api/generate", {"model": "bad\u0000name", "prompt": "x"}, 404, "not found"),
    ("/api/show", {"model": "no-such-model"}, 404, "not found"),
    ("/api/show", {}, 400, "'model'"),
    ("/api/pull", {"model": "no-such-model"}, 404, "not found"),
    ("/api/nope", {}, 404, "no route"),
]


@pytest.mark.parametrize("path, body, status, fragment", CASES)
def test_bad_requests_answer_in_ollamas_shape(client: TestClient, path: str, body, status: int,
                                               fragment: str) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()
    assert list(error) == ["error"] and isinstance(error["error"], str)
    assert fragment in error["error"], error
    # The server carries on.
    r = client.post("/api/chat", json={"model": DEFAULT, "messages": USER, "stream": False})
    assert r.status_code == 200


def test_wrong_method_and_delete_of_unknown(client: TestClient) -> None:
    r = client.get("/api/chat")
    assert r.status_code == 405 and list(r.json()) == ["error"]
    r = client.request("DELETE", "/api/delete", json={"model": "never-pulled:1b"})
    assert r.status_code == 404 and "not found" in r.json()["error"]


def test_engine_errors_before_the_first_chunk(make_app, loader) -> None:
    loader.defaults["fail_before_first"] = LlamarunError("the KV cache cannot hold this request",
                                                         "lower num_ctx")
    with TestClient(make_app()) as client:
        for stream in (False, True):
            r = client.post("/api/chat", json={"model": DEFAULT, "messages": USER, "stream": stream})
            assert r.status_code == 400
            assert r.json() == {"error": "the KV cache cannot hold this request (lower num_ctx)"}
        assert client.app.state.manager.loaded()[0].active == 0  # both leases were given back


def test_a_bug_is_a_500_in_shape_and_the_server_carries_on(make_app, loader) -> None:
    loader.per_model["fake-broken"] = {"fail_before_first": RuntimeError("boom")}
    with TestClient(make_app(), raise_server_exceptions=False) as client:
        r = client.post("/api/chat", json={"model": "fake-broken", "messages": USER, "stream": False})
        assert r.status_code == 500 and "boom" in r.json()["error"]
        r = client.post("/v1/chat/completions", json={"model": "fake-broken", "messages": USER})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        r = client.post("/api/chat", json={"model": DEFAULT, "messages": USER, "stream": False})
        assert r.status_code == 200 and r.json()["message"]["content"] == DEFAULT_REPLY
        assert all(m.active == 0 for m in client.app.state.manager.loaded())


def test_error_mid_stream_is_reported_in_band(make_app, loader) -> None:
    loader.defaults["fail_after_tokens"] = 3
    with TestClient(make_app()) as client:
        with client.stream("POST", "/api/generate", json={"model": DEFAULT, "prompt": "x"}) as r:
            assert r.status_code == 200
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert "".join(line.get("response", "") for line in lines[:-1]) == DEFAULT_REPLY[:3]
        assert lines[-1] == {"error": "the fake engine broke mid-stream"}
        assert client.app.state.manager.loaded()[0].active == 0
        assert loader.last().running == 0
