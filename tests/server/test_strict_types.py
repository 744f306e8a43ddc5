"""JSON true is not the integer 1 (issue 10, item 11), and `serve` takes its key from LLAMARUN_API_KEY."""

from __future__ import annotations

import argparse

import pytest
from conftest import DEFAULT
from fake_llm import FakeLoader
from fastapi.testclient import TestClient

from llamarun.cli import serve_cmd

pytestmark = pytest.mark.timeout(60)
USER = [{"role": "user", "content": "hi"}]
CHAT = {"model": DEFAULT, "messages": USER}
COMPLETION = {"model": DEFAULT, "prompt": "hi"}
OLLAMA = {"model": DEFAULT, "prompt": "hi", "stream": False}


@pytest.mark.parametrize(("path", "field", "bad", "good"), [
    ("/v1/chat/completions", "max_tokens", True, 3),
    ("/v1/chat/completions", "n", True, 2),
    ("/v1/chat/completions", "max_completion_tokens", 2.0, 2),
    ("/v1/chat/completions", "temperature", True, 1),
    ("/v1/chat/completions", "seed", "7", 7),
    ("/v1/completions", "max_tokens", True, 3),
    ("/v1/completions", "n", True, 2),
    ("/v1/completions", "logprobs", True, 1),
    ("/v1/completions", "prompt", [True, False], [104, 105]),
    ("/api/generate", "options.num_predict", True, 3),
    ("/api/generate", "options.num_ctx", True, 256),
    ("/api/generate", "options.temperature", False, 0),
    ("/api/generate", "context", [True], [104]),
])
def test_booleans_are_not_numbers(client: TestClient, loader: FakeLoader, path: str, field: str, bad, good) -> None:
    base = CHAT if path == "/v1/chat/completions" else COMPLETION if path == "/v1/completions" else OLLAMA

    def body(value) -> dict:
        if field.startswith("options."):
            return base | {"options": {field.removeprefix("options."): value}}
        return base | {field: value}

    r = client.post(path, json=body(bad))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    if path.startswith("/v1/"):
        assert error["param"].startswith(field), error
    else:
        assert f"'{field}" in error, error
    assert all(not m.calls for m in loader.instances)  # nothing ran
    r = client.post(path, json=body(good))
    assert r.status_code == 200, r.text  # the same request with a real number


def test_integers_are_still_numbers(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=CHAT | {"temperature": 0, "top_p": 1, "max_tokens": 3, "n": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2
    r = client.post("/api/generate", json=OLLAMA | {"options": {"temperature": 1, "num_predict": 3}})
    assert r.status_code == 200


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cmd.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_serve_reads_the_key_from_the_environment(store, monkeypatch) -> None:
    monkeypatch.setenv("LLAMARUN_HOME", str(store.root))
    monkeypatch.setenv("LLAMARUN_API_KEY", "from-env")
    args = parse()  # no --api-key on the command line, so none in `ps`
    assert args.api_key == "from-env"
    app = serve_cmd.build_app(args, serve_cmd.check_args(args), loader=FakeLoader())
    with TestClient(app, base_url="http://127.0.0.1") as client:  # serve binds loopback: Host is checked
        assert client.get("/api/tags").status_code == 401
        assert client.get("/api/tags", headers={"Authorization": "Bearer from-env"}).status_code == 200
    assert parse("--api-key", "flag").api_key == "flag"  # the flag still wins
