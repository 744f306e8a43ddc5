"""Each API's structured-output field becomes one GrammarSpec, or a 400 naming that field."""

from __future__ import annotations

import pytest

from llamarun.errors import RequestError
from llamarun.llm.response_format import ollama_format, openai_response_format
from llamarun.sampling.grammar_spec import GrammarSpec

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


def test_ollama_format():
    assert ollama_format(None) is None and ollama_format("") is None
    assert ollama_format("json") == GrammarSpec("json")
    assert ollama_format(SCHEMA) == GrammarSpec("json_schema", SCHEMA)
    spec = GrammarSpec("regex", "a+")
    assert ollama_format(spec) is spec
    with pytest.raises(RequestError, match="invalid format") as err:
        ollama_format("yaml")
    assert err.value.param == "format"


def test_openai_response_format():
    assert openai_response_format(None) is None and openai_response_format({"type": "text"}) is None
    assert openai_response_format({"type": "json_object"}) == GrammarSpec("json")
    for strict in (True, False, None):
        body = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": strict}}
        assert openai_response_format(body) == GrammarSpec("json_schema", SCHEMA)


@pytest.mark.parametrize("value, message", [
    ({"type": "xml"}, "not supported"),
    ({}, "not supported"),
    ({"type": "json_schema"}, "json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}, "json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": "yes"}}, "strict"),
])
def test_openai_errors_name_response_format(value, message):
    with pytest.raises(RequestError, match=message) as err:
        openai_response_format(value)
    assert err.value.param == "response_format"
