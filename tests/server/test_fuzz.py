"""Property-based fuzzing of both APIs' request bodies: never a 5xx, never a hang, errors in the API's shape.

Bodies are built from each endpoint's real field names with values that are sometimes plausible and
sometimes any JSON at all, plus raw bytes that are not JSON. Runs in-process against fake models, on
a store of its own (the fuzzer deletes and pulls), with a pull function that never touches the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DEFAULT, make_resolver
from fake_llm import FakeLoader
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamarun.errors import DownloadError
from llamarun.server import ModelManager, create_app
from llamarun.store.default_model import install_default_model_from
from llamarun.store.home import ModelStore

pytestmark = pytest.mark.timeout(240)
FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
any_json = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
    st.text(max_size=8), kids, max_size=3), max_leaves=8)
models = st.sampled_from([DEFAULT] * 6 + ["smollm2", "fake-fuzz", "fake-fuzz", "no-such:1b", "", "../..", "~",
                          "a/b", "x\u0000y", "hf.co/none/none"]) | st.text(max_size=20)
small_ints = st.integers(-3, 600) | st.integers(-(2**65), 2**65)
numbers = st.floats(-3, 3) | st.floats() | small_ints


def near(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly in range, so requests get past validation; sometimes any number at all."""
    return st.one_of(valid, valid, valid, numbers)

texts = st.text(max_size=40) | st.sampled_from(["BREAK THE TEMPLATE", "x" * 700])


def body(required: dict, optional: dict) -> st.SearchStrategy:
    """Bodies with plausible values (often out of range), or, one time in four, any JSON in every field."""
    plausible = st.fixed_dictionaries(required, optional=optional)
    wild = st.fixed_dictionaries({k: v | any_json for k, v in required.items()},
                                 optional={k: v | any_json for k, v in optional.items()})
    return st.one_of(plausible, plausible, plausible, wild)


options = body({}, {name: numbers for name in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty",
                                               "repeat_last_n", "presence_penalty", "frequency_penalty",
                                               "seed", "num_predict", "num_ctx")}
               | {"stop": st.lists(st.text(max_size=3), max_size=3)})
tool_call = body({"function": body({"name": texts}, {"arguments": any_json})}, {})
ollama_roles = st.sampled_from(["system", "user", "assistant", "tool", "x"])
ollama_message = body({"role": ollama_roles, "content": texts},
                      {"images": st.lists(st.text(max_size=4), max_size=1), "tool_name": texts,
                       "tool_calls": st.lists(tool_call, max_size=1)})
openai_message = body({"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot"]),
                       "content": texts | st.lists(body({"type": st.sampled_from(["text", "image_url"]),
                                                         "text": texts}, {}), max_size=2)}, {})
ollama_common = {"stream": st.booleans(), "options": options, "keep_alive": st.sampled_from(
    ["0", "5m", "1h2m3s", "-1", "bogus", "1e400"]) | numbers, "format": st.sampled_from(["", "json"]),
    "think": st.booleans(), "logprobs": st.booleans(), "top_logprobs": small_ints}
openai_common = {"max_tokens": near(st.integers(1, 600)), "temperature": near(st.floats(0, 2)),
                 "top_p": near(st.floats(0.01, 1)), "n": near(st.integers(1, 4)), "stream": st.booleans(),
                 "stream_options": body({}, {"include_usage": st.booleans()}),
                 "seed": near(st.integers(0, 99)),
                 "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=5),
                 "presence_penalty": near(st.floats(-2, 2)), "frequency_penalty": near(st.floats(-2, 2)),
                 "top_k": near(st.integers(0, 50))}

prompts = texts | st.lists(small_ints, max_size=4) | st.lists(texts, max_size=3)

BODIES = {
    "/api/generate": body({"model": models}, {"prompt": texts, "system": texts, "raw": st.booleans(),
                                              "context": st.lists(small_ints, max_size=5), **ollama_common}),
    "/api/chat": body({"model": models}, {"messages": st.lists(ollama_message, max_size=3),
                                          "tools": st.lists(any_json, max_size=2), **ollama_common}),
    "/api/show": body({"model": models}, {"verbose": st.booleans()}),
    "/api/pull": body({"model": models}, {"stream": st.booleans()}),
    "/v1/chat/completions": body({"model": models, "messages": st.lists(openai_message, max_size=3)}, {
        "logprobs": st.booleans(), "top_logprobs": near(st.integers(0, 20)),
        "max_completion_tokens": near(st.integers(1, 600)),
        "response_format": body({"type": st.sampled_from(["text", "json_object"])}, {}), **openai_common}),
    "/v1/completions": body({"model": models, "prompt": prompts},
                            {"echo": st.booleans(), "logprobs": near(st.integers(0, 5)), **openai_common}),
    "/api/delete": body({"model": models}, {}),  # last: it may delete the model the others use
}


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory, default_gguf: Path) -> Iterator[TestClient]:
    own = ModelStore(tmp_path_factory.mktemp("fuzz-home"))
    install_default_model_from(default_gguf, own)

    def offline_pull(name: str, *, store=None):
        raise DownloadError(f"no network in the fuzzer ({name[:20]})")

    loader = FakeLoader(reply="ok, done", context_length=512)
    manager = ModelManager(loader, resolve=make_resolver(own), memory_budget=10**9)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        app = create_app(manager, store=own, pull=offline_pull)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client


def check(response, path: str) -> None:
    assert response.status_code < 500, (path, response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        if path.startswith("/v1/"):
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
        else:
            assert isinstance(error, str) and error
    elif "ndjson" in response.headers.get("content-type", "") or "event-stream" in response.headers.get(
            "content-type", ""):
        for line in response.text.splitlines():
            if line and line != "data: [DONE]":
                payload = json.loads(line.removeprefix("data: "))
                # Nothing fails after the status line (but the fuzzer's pull always does).
                assert "error" not in payload or path == "/api/pull", payload


@pytest.mark.parametrize("path", list(BODIES))
def test_fuzzed_bodies_never_5xx(fuzz_client: TestClient, path: str) -> None:
    method = "DELETE" if path == "/api/delete" else "POST"

    @FUZZ
    @given(data=BODIES[path])
    def run(data) -> None:
        # Python's json writes inf/nan as Infinity/NaN, which JavaScript clients also send by mistake.
        check(fuzz_client.request(method, path, content=json.dumps(data).encode()), path)

    run()


@FUZZ
@given(raw=st.binary(max_size=60) | st.text(max_size=60).map(str.encode),
       path=st.sampled_from(list(BODIES)))
def test_fuzzed_raw_bytes_never_5xx(fuzz_client: TestClient, raw: bytes, path: str) -> None:
    method = "DELETE" if path == "/api/delete" else "POST"
    check(fuzz_client.request(method, path, content=raw, headers={"content-type": "application/json"}), path)
