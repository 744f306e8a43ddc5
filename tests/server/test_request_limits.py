"""One small request cannot flood the engine: limits on generations and prompt tokens (issue 10, item 4)."""

from __future__ import annotations

import argparse

import pytest
from conftest import DEFAULT
from fake_llm import FakeLoader
from fastapi.testclient import TestClient

from llamarun.cli import serve_cmd
from llamarun.errors import LlamarunError
from llamarun.llm.request_limits import RequestLimits

pytestmark = pytest.mark.timeout(60)


def completions(client: TestClient, prompt, n: int = 1):
    return client.post("/v1/completions", json={"model": DEFAULT, "prompt": prompt, "n": n, "max_tokens": 3})


def test_prompts_times_n_is_limited_before_the_model_loads(client, loader) -> None:
    r = completions(client, ["hi"] * 100, n=16)  # 1,347 bytes that asked for 1,600 generations
    assert r.status_code == 400
    error = r.json()["error"]
    assert "1600 generations" in error["message"] and "limit of 64" in error["message"]
    assert error["param"] == "prompt" and error["code"] == "too_many_generations"
    assert loader.instances == []  # refused before any load or engine work
    r = completions(client, "hi", n=16)
    assert r.status_code == 200 and len(r.json()["choices"]) == 16  # n alone is as before
    r = completions(client, ["hi"] * 4, n=16)  # exactly the limit: the well-behaved client
    assert r.status_code == 200 and len(r.json()["choices"]) == 64
    assert len(loader.last().calls) == 16 + 64


def test_prompt_tokens_are_limited_per_request(client, loader) -> None:
    client.app.state.service.limits = RequestLimits(max_prompt_tokens=100)
    r = completions(client, ["x" * 60, "y" * 60])  # each fits the context; together 122 tokens
    assert r.status_code == 400
    assert "122 tokens" in r.json()["error"]["message"] and "limit of 100" in r.json()["error"]["message"]
    r = client.post("/api/chat", json={"model": DEFAULT, "stream": False,
                                       "messages": [{"role": "user", "content": "z" * 120}]})
    assert r.status_code == 400 and "limit of 100" in r.json()["error"]
    assert loader.last().calls == []  # no engine work
    assert completions(client, ["x" * 30, "y" * 30]).status_code == 200


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cmd.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_serve_flags_set_the_limits(store, monkeypatch) -> None:
    monkeypatch.setenv("LLAMARUN_HOME", str(store.root))
    args = parse("--max-generations", "4", "--max-prompt-tokens", "1000")
    app = serve_cmd.build_app(args, serve_cmd.check_args(args), loader=FakeLoader())
    assert app.state.service.limits == RequestLimits(4, 1000)
    with TestClient(app, base_url="http://127.0.0.1") as client:  # serve binds loopback: Host is checked
        r = completions(client, ["a", "b"], n=3)
        assert r.status_code == 400 and "6 generations" in r.json()["error"]["message"]
        assert completions(client, ["a", "b"], n=2).status_code == 200
    defaults = parse()
    assert (defaults.max_generations, defaults.max_prompt_tokens) == (64, 262_144)
    for flag in ("--max-generations", "--max-prompt-tokens"):
        with pytest.raises(LlamarunError, match=flag):
            serve_cmd.check_args(parse(flag, "0"))
