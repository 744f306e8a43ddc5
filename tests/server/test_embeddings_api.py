"""Embeddings through the official `openai` and `ollama` clients against a live server on the fake model.

The fake's vectors come from token counts (fake_llm.fake_embedding), so each test knows the exact
answer; the input checks, truncation and the routes are the real code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from conftest import DEFAULT, live_server, make_resolver
from fake_llm import BOS, FakeLoader, fake_embedding

from llamarun.llm.embed_inputs import MAX_INPUTS
from llamarun.server import ModelManager, create_app

pytestmark = pytest.mark.timeout(120)
HIDDEN = 64  # the fake's hidden size
SHORT = "fake-short"  # a fake model with a 16-token context
TEXTS = ["hello", "the weather in the hills", "ok"]


def ids_of(text: str) -> list[int]:
    return [BOS, *text.encode()]


def expected(text: str, dimensions: int | None = None) -> list[float]:
    return fake_embedding(ids_of(text), HIDDEN, dimensions)


@pytest.fixture(scope="module")
def live(store) -> Iterator[tuple[str, FakeLoader, ModelManager]]:
    loader = FakeLoader()
    loader.per_model[SHORT] = {"context_length": 16}
    manager = ModelManager(loader, resolve=make_resolver(store))
    with live_server(create_app(manager, store=store)) as url:
        yield url, loader, manager


@pytest.fixture(scope="module")
def oai(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live[0]}/v1", api_key="none", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def oll(live) -> ollama.Client:
    return ollama.Client(host=live[0], timeout=30)


def test_openai_float_and_base64(oai: openai.OpenAI) -> None:
    floats = oai.embeddings.create(model=DEFAULT, input=TEXTS, encoding_format="float")
    assert floats.object == "list" and floats.model == DEFAULT
    assert [d.index for d in floats.data] == [0, 1, 2]
    for d, text in zip(floats.data, TEXTS, strict=True):
        assert d.object == "embedding" and d.embedding == pytest.approx(expected(text), abs=1e-12)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == sum(len(ids_of(t)) for t in TEXTS)
    # Without encoding_format the client asks for base64 and decodes the float32 bytes itself.
    b64 = oai.embeddings.create(model=DEFAULT, input=TEXTS)
    for d, text in zip(b64.data, TEXTS, strict=True):
        assert d.embedding == pytest.approx(expected(text), rel=1e-6)
    explicit = oai.embeddings.create(model=DEFAULT, input=TEXTS[0], encoding_format="base64")
    assert isinstance(explicit.data[0].embedding, str)


def test_openai_token_ids_and_dimensions(oai: openai.OpenAI) -> None:
    one = oai.embeddings.create(model=DEFAULT, input=[104, 105], encoding_format="float")
    assert one.data[0].embedding == pytest.approx(fake_embedding([104, 105], HIDDEN))
    many = oai.embeddings.create(model=DEFAULT, input=[[104, 105], [7]], encoding_format="float")
    assert [d.embedding for d in many.data] == [one.data[0].embedding, pytest.approx(fake_embedding([7], HIDDEN))]
    assert many.usage.prompt_tokens == 3
    short = oai.embeddings.create(model=DEFAULT, input="hello", dimensions=8, encoding_format="float")
    vec = short.data[0].embedding
    assert vec == pytest.approx(expected("hello", 8)) and math.isclose(sum(x * x for x in vec), 1.0)


def test_batch_equals_one_by_one(oai: openai.OpenAI, oll: ollama.Client) -> None:
    batch = oll.embed(model=DEFAULT, input=TEXTS).embeddings
    assert batch == [oll.embed(model=DEFAULT, input=t).embeddings[0] for t in TEXTS]
    assert batch == [d.embedding for d in oai.embeddings.create(model=DEFAULT, input=TEXTS,
                                                                 encoding_format="float").data]


def test_ollama_embed_and_legacy_embeddings(live, oll: ollama.Client) -> None:
    loader = live[1]
    out = oll.embed(model=DEFAULT, input=TEXTS, keep_alive="10m")
    assert out.model == DEFAULT and out.embeddings == [pytest.approx(expected(t)) for t in TEXTS]
    assert out.prompt_eval_count == sum(len(ids_of(t)) for t in TEXTS)
    assert out.total_duration > 0 and out.load_duration is not None
    assert loader.last(DEFAULT).embedded[-3:] == [ids_of(t) for t in TEXTS]
    single = oll.embed(model=DEFAULT, input="hello", dimensions=4)
    assert single.embeddings == [pytest.approx(expected("hello", 4))]
    legacy = oll.embeddings(model=DEFAULT, prompt="hello")
    assert legacy.embedding == pytest.approx(expected("hello"))
    assert oll.embeddings(model=DEFAULT, prompt="").embedding == []
    assert oll.embed(model=DEFAULT, input=[]).embeddings == []  # loads only, as Ollama does


def test_truncate(oll: ollama.Client, live) -> None:
    text = "a text longer than sixteen tokens"
    cut = oll.embed(model=SHORT, input=text)
    assert cut.embeddings == [pytest.approx(fake_embedding(ids_of(text)[:16], HIDDEN))]
    assert cut.prompt_eval_count == 16
    with pytest.raises(ollama.ResponseError) as err:
        oll.embed(model=SHORT, input=text, truncate=False)
    assert err.value.status_code == 400 and "context holds 16" in err.value.error


def test_openai_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.embeddings.create(model=DEFAULT, input="hi", dimensions=HIDDEN + 1)
    assert err.value.param == "dimensions" and str(HIDDEN) in err.value.message
    with pytest.raises(openai.NotFoundError) as err:
        oai.embeddings.create(model="no-such-model:1b", input="hi")
    assert err.value.code == "model_not_found"
    for empty in ("", [], [""], [[]]):
        with pytest.raises(openai.BadRequestError) as err:
            oai.embeddings.create(model=DEFAULT, input=empty)
        assert err.value.param == "input"
    with pytest.raises(openai.BadRequestError) as err:
        oai.embeddings.create(model=DEFAULT, input=["x"] * (MAX_INPUTS + 1))
    assert err.value.code == "too_many_inputs" and f"at most {MAX_INPUTS}" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        oai.embeddings.create(model=DEFAULT, input=[[1, 10**6]])
    assert "outside the vocabulary" in err.value.message


def test_ollama_errors(live, oll: ollama.Client) -> None:
    url, loader, _ = live
    with pytest.raises(ollama.ResponseError) as err:
        oll.embed(model="no-such-model:1b", input="hi")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        oll.embed(model=DEFAULT, input="hi", dimensions=HIDDEN + 1)
    assert err.value.status_code == 400 and "dimensions" in err.value.error
    calls = len(loader.instances)
    r = httpx.post(f"{url}/api/embed", json={"model": "fake-never-loaded", "input": ["x"] * (MAX_INPUTS + 1)})
    assert r.status_code == 400 and f"at most {MAX_INPUTS}" in r.json()["error"]
    assert len(loader.instances) == calls  # refused before loading anything
    r = httpx.post(f"{url}/api/embed", json={"model": DEFAULT, "input": 42})
    assert r.status_code == 400 and "input" in r.json()["error"]
    r = httpx.post(f"{url}/api/embeddings", json={"prompt": "hi"})
    assert r.status_code == 400 and "model" in r.json()["error"]
