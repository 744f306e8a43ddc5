"""tool_choice validation and the JSON schema of a forced call, checked with jsonschema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from llamarun.errors import RequestError
from llamarun.sampling.params import SamplingParams
from llamarun.tools.choice import ToolChoice, apply_forced_call, forced_call_schema, resolve_tool_choice
from llamarun.tools.parse import ToolCallParser

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}
NO_PARAMS = {"type": "function", "function": {"name": "now"}}
TOOLS = [WEATHER, ADD, NO_PARAMS]


@pytest.mark.parametrize(("choice", "expected"), [
    (None, ToolChoice("auto")), ("auto", ToolChoice("auto")), ("none", ToolChoice("none")),
    ("required", ToolChoice("required")),
    ({"type": "function", "function": {"name": "add"}}, ToolChoice("function", "add")),
])
def test_valid_choices(choice, expected):
    assert resolve_tool_choice(choice, TOOLS) == expected


@pytest.mark.parametrize(("choice", "tools", "needle"), [
    ({"type": "function", "function": {"name": "nope"}}, TOOLS, "not among the tools"),
    ("sometimes", TOOLS, "not one of"),
    ({"type": "function"}, TOOLS, "named tool_choice"),
    ({"type": "web", "function": {"name": "add"}}, TOOLS, "named tool_choice"),
    ("required", None, "needs tools"),
    ({"type": "function", "function": {"name": "add"}}, [], "needs tools"),
])
def test_bad_choices_name_the_param(choice, tools, needle):
    with pytest.raises(RequestError, match=needle) as err:
        resolve_tool_choice(choice, tools)
    assert err.value.param == "tool_choice"


def test_named_schema_accepts_only_that_tools_calls():
    schema = forced_call_schema(TOOLS, ToolChoice("function", "get_weather"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"name": "get_weather", "parameters": {"city": "Oslo", "unit": "c"}}, schema)
    for bad in ({"name": "add", "parameters": {"a": 1, "b": 2}}, {"name": "get_weather", "parameters": {}},
                {"name": "get_weather", "parameters": {"city": "Oslo", "unit": "k"}},
                {"name": "get_weather", "parameters": {"city": "Oslo"}, "extra": 1}, {"name": "get_weather"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_required_schema_is_any_tools_call_and_parses_back():
    schema = forced_call_schema(TOOLS, ToolChoice("required"))
    jsonschema.Draft202012Validator.check_schema(schema)
    good = [{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "add", "parameters": {"a": 1, "b": 2}},
            {"name": "now", "parameters": {}}]
    for call in good:
        jsonschema.validate(call, schema)
        # What the grammar lets through is what the parser reads as a call.
        parsed = ToolCallParser(["get_weather", "add", "now"]).parse(json.dumps(call)).calls
        assert [(c.name, c.arguments) for c in parsed] == [(call["name"], call["parameters"])]
    for bad in ({"name": "other", "parameters": {}}, {"name": "add", "parameters": {"a": 1}}, "add(a=1)"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_auto_and_none_force_nothing():
    assert forced_call_schema(TOOLS, ToolChoice("auto")) is None
    assert forced_call_schema(TOOLS, ToolChoice("none")) is None
    assert apply_forced_call(SamplingParams(), None) == SamplingParams()


def test_forced_call_reaches_the_grammar_or_is_refused():
    schema = forced_call_schema(TOOLS, ToolChoice("required"))
    try:
        from llamarun.sampling.grammar_spec import GrammarSpec
    except ImportError:  # before grammar-constrained decoding is merged: refused, never ignored
        with pytest.raises(RequestError, match="grammar") as err:
            apply_forced_call(SamplingParams(), schema)
        assert err.value.param == "tool_choice"
        return
    params = apply_forced_call(SamplingParams(), schema)
    assert params.grammar == GrammarSpec("json_schema", schema)
