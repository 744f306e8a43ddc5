"""Grammars on the bundled default model (SmolLM2-135M) through the Python API: every output validates."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ORDER = {"type": "object", "properties": {
    "order_id": {"type": "string", "pattern": "^ORD-[0-9]{4}$"},
    "total": {"type": "number", "minimum": 0, "maximum": 500},
    "status": {"enum": ["open", "paid", "shipped"]},
    "customer": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20},
        "vip": {"type": "boolean"}}, "required": ["name", "vip"], "additionalProperties": False},
    "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "object", "properties": {
        "sku": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "qty": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["sku", "qty"],
        "additionalProperties": False}}},
    "required": ["order_id", "total", "status", "customer", "items"], "additionalProperties": False}


@pytest.fixture(scope="module")
def llm(default_gguf):
    from llamarun.llm.sync import LLM

    model = LLM(str(default_gguf), context_length=1024)
    yield model
    model.close()


@pytest.mark.parametrize("seed", [None, 7])
def test_a_nested_schema_validates(llm, seed):
    params = SamplingParams(max_tokens=200, seed=seed) if seed is not None else SamplingParams.greedy(max_tokens=200)
    out = llm.chat([{"role": "user", "content": "Write an example shop order as JSON."}], params, format=ORDER)
    assert out.finish_reason == "stop"
    jsonschema.validate(json.loads(out.text), ORDER)


def test_any_json_regex_and_choice(llm):
    ask = [{"role": "user", "content": 'Reply with a JSON object like {"answer": "..."}: what is 2+2?'}]
    out = llm.chat(ask, SamplingParams.greedy(max_tokens=200), format="json")
    assert out.finish_reason == "stop" and isinstance(json.loads(out.text), dict)
    iso_date = GrammarSpec("regex", r" [0-9]{4}-[0-9]{2}-[0-9]{2}")
    date = llm.generate("Today's date is", SamplingParams.greedy(max_tokens=20, grammar=iso_date))
    assert re.fullmatch(r" [0-9]{4}-[0-9]{2}-[0-9]{2}", date.text)
    pick = llm.chat([{"role": "user", "content": "Is the sky green?"}],
                    SamplingParams(max_tokens=5, seed=1, grammar=GrammarSpec("choice", ["yes", "no", "maybe"])))
    assert pick.text in ("yes", "no", "maybe") and pick.finish_reason == "stop"


def test_without_format_the_model_writes_prose(llm):
    # The schema tests above would pass vacuously if the grammar were ignored; unconstrained, this is not JSON.
    out = llm.chat([{"role": "user", "content": "Write an example shop order as JSON."}],
                   SamplingParams.greedy(max_tokens=40))
    with pytest.raises(ValueError):
        jsonschema.validate(json.loads(out.text), ORDER)
