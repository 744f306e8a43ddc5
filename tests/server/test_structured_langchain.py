"""LangChain's `with_structured_output` against the real server app and engine, on a tiny random model (issue 11).

Random weights write nothing sensible, so every answer that parses into the schema is the grammar's doing:
ChatOpenAI through `response_format` (method="json_schema") and through a forced tool call
(method="function_calling", tool_choice naming the schema's function); ChatOllama through `format`.
ChatOllama's "function_calling" does not apply: Ollama's API has no tool_choice, so nothing forces the call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pydantic
import pytest
from conftest import live_server
from tiny_tool_model import tiny_tool_model

from llamarun.server import ModelManager, create_app
from llamarun.server.model_manager import default_loader
from llamarun.store.home import ModelStore
from llamarun.store.resolve import resolve_model

langchain_openai = pytest.importorskip("langchain_openai")
langchain_ollama = pytest.importorskip("langchain_ollama")

pytestmark = pytest.mark.timeout(300)
ASK = "Describe a pet."


class Pet(pydantic.BaseModel):
    """A pet, as the model must describe it."""

    name: str = pydantic.Field(max_length=6, description="its name")
    kind: Literal["cat", "dog", "fish"]
    age: int = pydantic.Field(ge=0, le=30)
    vaccinated: bool


class Owner(pydantic.BaseModel):
    """A nested schema: an owner with a list of pets."""

    initials: str = pydantic.Field(pattern="^[A-Z]{2}$")
    pets: list[Pet] = pydantic.Field(min_length=1, max_length=2)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("structured-langchain")
    model = str(tiny_tool_model(root / "tiny"))
    store = ModelStore(root / "home")
    manager = ModelManager(default_loader(), resolve=lambda name: resolve_model(name, pull=False, store=store).name)
    with live_server(create_app(manager, store=store, preload=model), timeout=120) as url:
        yield url, model


def chat_openai(served: tuple[str, str], seed: int):
    url, model = served
    return langchain_openai.ChatOpenAI(base_url=f"{url}/v1", api_key="none", model=model, max_retries=0, timeout=120,
                                       max_tokens=300, temperature=1.0, seed=seed)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
@pytest.mark.parametrize("schema", [Pet, Owner])
def test_chat_openai_with_structured_output(served, method: str, schema: type[pydantic.BaseModel]) -> None:
    for seed in range(2):  # two draws: each must parse, not just a lucky one
        structured = chat_openai(served, seed).with_structured_output(schema, method=method, include_raw=True)
        out = structured.invoke(ASK)
        assert out["parsing_error"] is None, out["raw"]
        assert isinstance(out["parsed"], schema), out
        if method == "function_calling":  # it came back as a call, not as text
            [call] = out["raw"].tool_calls
            assert call["name"] == schema.__name__ and out["raw"].content == ""
        else:
            assert not out["raw"].tool_calls and out["raw"].content


def test_chat_openai_json_schema_streams_into_the_schema(served) -> None:
    structured = chat_openai(served, 7).with_structured_output(Pet, method="json_schema")
    parts = list(structured.stream(ASK))
    assert parts and isinstance(parts[-1], Pet)


@pytest.mark.parametrize("schema", [Pet, Owner])
def test_chat_ollama_with_structured_output(served, schema: type[pydantic.BaseModel]) -> None:
    url, model = served
    for seed in range(2):
        llm = langchain_ollama.ChatOllama(base_url=url, model=model, seed=seed, temperature=1.0, num_predict=300)
        out = llm.with_structured_output(schema, method="json_schema", include_raw=True).invoke(ASK)
        assert out["parsing_error"] is None, out["raw"]
        assert isinstance(out["parsed"], schema), out
