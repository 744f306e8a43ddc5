"""Structured output through the official `openai` and `ollama` clients, on a live server with the default model.

Every answer under a format must parse and validate against its schema (the grammar is enforced, not hoped for).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import jsonschema
import ollama
import openai
import pydantic
import pytest
from conftest import DEFAULT, live_server, make_resolver

from llamarun.server import ModelManager, create_app
from llamarun.server.model_manager import default_loader

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]
ASK = [{"role": "user", "content": "Invent a city and describe it as JSON."}]
CITY = {"type": "object", "properties": {
    "name": {"type": "string", "pattern": "^[A-Z][a-z]{2,12}$"},
    "population": {"type": "integer", "minimum": 1000, "maximum": 99999},
    "size": {"enum": ["small", "large"]},
    "districts": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 2}},
    "required": ["name", "population", "size", "districts"], "additionalProperties": False}


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    kind: Literal["cat", "dog"]
    age: int = pydantic.Field(ge=0, le=30)


@pytest.fixture(scope="module")
def url(store) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLAMARUN_HOME", str(store.root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        manager = ModelManager(default_loader(max_kv_tokens=4096), resolve=make_resolver(store), context_length=1024)
        with live_server(create_app(manager, store=store, preload=DEFAULT), timeout=240) as base:
            yield base


@pytest.fixture(scope="module")
def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_openai_json_schema_and_json_object(oai: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
    out = oai.chat.completions.create(model=DEFAULT, messages=ASK, response_format=fmt, max_tokens=120, seed=4)
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].message.content), CITY)
    short = [{"role": "user", "content": 'Reply with a JSON object like {"answer": "..."}: what is 2+2?'}]
    out = oai.chat.completions.create(model=DEFAULT, messages=short, response_format={"type": "json_object"},
                                      max_tokens=200, temperature=0)
    assert out.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(out.choices[0].message.content), dict)


def test_openai_parse_with_a_pydantic_model(oai: openai.OpenAI) -> None:
    parse = getattr(oai.chat.completions, "parse", None) or oai.beta.chat.completions.parse
    out = parse(model=DEFAULT, messages=[{"role": "user", "content": "Describe a pet."}], response_format=Pet,
                max_tokens=80, temperature=0)
    pet = out.choices[0].message.parsed
    assert isinstance(pet, Pet) and pet.kind in ("cat", "dog")


def test_openai_completions_take_response_format(oai: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
    out = oai.completions.create(model=DEFAULT, prompt="A city as JSON:", max_tokens=120, temperature=0,
                                 extra_body={"response_format": fmt})
    jsonschema.validate(json.loads(out.choices[0].text), CITY)


def test_openai_unsupported_schema_is_a_400(oai: openai.OpenAI) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}}}}
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=DEFAULT, messages=ASK, response_format=bad, max_tokens=5)
    assert err.value.param == "response_format" and err.value.type == "invalid_request_error"
    assert "cannot be enforced" in err.value.message


def test_ollama_format_schema_and_json(url: str) -> None:
    oll = ollama.Client(host=url, timeout=300)
    out = oll.chat(model=DEFAULT, messages=ASK, format=CITY, options={"seed": 2, "num_predict": 120})
    assert out.done_reason == "stop"
    jsonschema.validate(json.loads(out.message.content), CITY)
    pet = oll.generate(model=DEFAULT, prompt="A pet as JSON:", format=Pet.model_json_schema(),
                       options={"temperature": 0, "num_predict": 80})
    Pet.model_validate_json(pet.response)
    streamed = "".join(c.message.content for c in oll.chat(model=DEFAULT, messages=ASK, format="json", stream=True,
                                                             options={"temperature": 0, "num_predict": 120}))
    assert isinstance(json.loads(streamed), dict)
