"""LangChain's OllamaEmbeddings and OpenAIEmbeddings against a live server on the fake model (issue 9's clients)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import DEFAULT, live_server, make_resolver
from fake_llm import BOS, FakeLoader, fake_embedding

from llamarun.server import ModelManager, create_app

langchain_openai = pytest.importorskip("langchain_openai")
langchain_ollama = pytest.importorskip("langchain_ollama")

pytestmark = pytest.mark.timeout(120)
HIDDEN = 64  # the fake's hidden size
TEXTS = ["hello", "the weather in the hills", "ok"]


def expected(text: str) -> list[float]:
    return fake_embedding([BOS, *text.encode()], HIDDEN, None)


@pytest.fixture(scope="module")
def url(store) -> Iterator[str]:
    with live_server(create_app(ModelManager(FakeLoader(), resolve=make_resolver(store)), store=store)) as base:
        yield base


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-5 for x, y in zip(a, b, strict=True))


def test_ollama_embeddings(url: str) -> None:
    emb = langchain_ollama.OllamaEmbeddings(model=DEFAULT, base_url=url)
    vectors = emb.embed_documents(TEXTS)
    assert all(close(v, expected(t)) for v, t in zip(vectors, TEXTS, strict=True))
    assert close(emb.embed_query("hello"), expected("hello"))


def test_openai_embeddings(url: str) -> None:
    # check_embedding_ctx_length=False: LangChain would otherwise tokenize with tiktoken (a download) first
    emb = langchain_openai.OpenAIEmbeddings(model=DEFAULT, base_url=f"{url}/v1", api_key="none", max_retries=0,
                                            check_embedding_ctx_length=False, timeout=30)
    vectors = emb.embed_documents(TEXTS)
    assert all(close(v, expected(t)) for v, t in zip(vectors, TEXTS, strict=True))
    assert close(emb.embed_query("ok"), expected("ok"))
