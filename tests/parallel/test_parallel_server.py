"""`llamarun serve --tp/--pp` through the real server and engine, ranks spawned with gloo on CPUs.

Greedy /api/generate answers (tokens and their log-probabilities) equal a one-process server's. The
server holds one parallel model at a time: an idle one is unloaded (its ranks stopped) to make room
for another (the 503 for a busy or pinned one is tested with fake models, test_one_model_at_a_time.py).
A killed rank makes the next request a 503 carrying the ParallelError, within the timeout, not a hang.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.parallel import pipeline_launch
from llamarun.parallel.layout import PP_ENV
from llamarun.parallel.settings import TP_ENV
from llamarun.server import ModelManager, create_app
from llamarun.server.model_manager import default_loader
from llamarun.store.home import ModelStore
from llamarun.store.resolve import resolve_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
PROMPTS = ["the cat sat", "once upon a time there was"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    """Two tiny byte-tokenizer models of 3 layers (stages split 2 + 1)."""
    root = tmp_path_factory.mktemp("served")
    spec = TinySpec(num_layers=3, llama3_rope=True)
    paths = [str(add_byte_tokenizer(write_hf(spec, make_weights(spec, seed=seed)[0], root / f"m{seed}")))
             for seed in (31, 32)]
    return paths[0], paths[1]


@contextmanager
def layout(tp: int, pp: int) -> Iterator[None]:
    """Load models over tp x pp ranks inside the block (what `serve --tp --pp` sets)."""
    before = {k: os.environ.get(k) for k in (TP_ENV, PP_ENV)}
    os.environ[TP_ENV], os.environ[PP_ENV] = str(tp), str(pp)
    try:
        yield
    finally:
        for key, value in before.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@contextmanager
def server(tmp_path, preload: str | None, one_at_a_time: bool) -> Iterator[TestClient]:
    store = ModelStore(tmp_path / "home")
    manager = ModelManager(default_loader(), resolve=lambda name: resolve_model(name, pull=False, store=store).name,
                           one_at_a_time=one_at_a_time)
    with TestClient(create_app(manager, store=store, preload=preload)) as client:
        yield client


def generate(client: TestClient, model: str, prompt: str) -> tuple[int, dict]:
    body = {"model": model, "prompt": prompt, "raw": True, "stream": False, "logprobs": True, "top_logprobs": 3,
            "options": {"num_predict": 8, "temperature": 0}}
    r = client.post("/api/generate", json=body)
    return r.status_code, r.json()


def stopped(handle, timeout: float = 20.0) -> bool:
    """Whether the ranks of `handle` end within `timeout` (the hub closes them after the model's last step)."""
    deadline = time.monotonic() + timeout
    while any(p.is_alive() for p in handle.processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    return handle.closed and not any(p.is_alive() for p in handle.processes)


def assert_same_answers(got: dict, want: dict) -> None:
    assert got["response"] == want["response"] and got["eval_count"] == want["eval_count"]
    for mine, ref in zip(got["logprobs"], want["logprobs"], strict=True):
        assert mine["token"] == ref["token"]
        assert mine["logprob"] == pytest.approx(ref["logprob"], abs=1e-4)
        assert [t["token"] for t in mine["top_logprobs"]] == [t["token"] for t in ref["top_logprobs"]]


@pytest.fixture(scope="module")
def expected(models, tmp_path_factory) -> dict[str, dict]:
    """The one-process server's answers."""
    model = models[0]
    with server(tmp_path_factory.mktemp("one"), model, one_at_a_time=False) as client:
        answers = {p: generate(client, model, p) for p in PROMPTS}
    assert all(status == 200 and body["response"] for status, body in answers.values()), answers
    return {p: body for p, (_, body) in answers.items()}


def test_serve_tp2_answers_as_one_process_then_swaps_models(models, expected, tmp_path):
    """Nothing pinned: a request for a second model, the first idle, stops the first's ranks and loads the second."""
    first, second = models
    with layout(2, 1), server(tmp_path, None, one_at_a_time=True) as client:
        for prompt in PROMPTS:
            status, body = generate(client, first, prompt)
            assert status == 200, body
            assert_same_answers(body, expected[prompt])
        r = client.post("/api/embed", json={"model": first, "input": "hello"})  # rank 0 alone cannot run it
        assert r.status_code == 400 and "split over ranks" in r.json()["error"], r.text
        (old,) = pipeline_launch._OPEN.values()
        status, body = generate(client, second, PROMPTS[0])
        assert status == 200, body
        assert stopped(old)
        (new,) = pipeline_launch._OPEN.values()
    assert stopped(new)  # the server's shutdown stopped the second model's ranks


def test_serve_tp2_pp2_answers_as_one_process_and_a_dead_rank_is_a_503(models, expected, tmp_path):
    served = models[0]
    with layout(2, 2), server(tmp_path, served, one_at_a_time=True) as client:
        for prompt in PROMPTS:
            status, body = generate(client, served, prompt)
            assert status == 200, body
            assert_same_answers(body, expected[prompt])
        (handle,) = pipeline_launch._OPEN.values()
        handle.processes[1].kill()  # rank 2: stage 1, tp rank 0
        handle.processes[1].join()
        t0 = time.monotonic()
        status, body = generate(client, served, PROMPTS[0])
        assert status == 503 and "rank 0" in body["error"] and "failed" in body["error"], body
        assert time.monotonic() - t0 < handle.group.timeout_s + 10
    assert stopped(handle, timeout=10)  # a broken model's ranks are killed at shutdown, not waited for
