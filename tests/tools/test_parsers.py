"""Each tool-call format parsed on its own, through the parser that picks one, and malformed calls kept as text."""

from __future__ import annotations

import logging

import pytest

from llamarun.tools.builtin_calls import parse_builtin_call
from llamarun.tools.function_tag import parse_function_tags
from llamarun.tools.json_calls import parse_json_calls
from llamarun.tools.parse import ToolCallParser
from llamarun.tools.pythonic import parse_pythonic_calls

NAMES = ["get_weather", "add", "brave_search", "wolfram_alpha", "code_interpreter"]


def pairs(calls):
    return [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize(("text", "expected"), [
    ('{"name": "get_weather", "parameters": {"city": "Zürich"}}', [("get_weather", {"city": "Zürich"})]),
    ('{"name": "add", "arguments": {"a": 1, "b": 2.5}}', [("add", {"a": 1, "b": 2.5})]),
    ('{"name": "add", "arguments": "{\\"a\\": 1}"}', [("add", {"a": 1})]),  # arguments as a JSON string
    ('{"type": "function", "name": "add", "parameters": {}}', [("add", {})]),  # Meta's own form
    ('{"name": "add", "parameters": {"a": 1}}; {"name": "get_weather", "parameters": {"city": "Oslo"}}',
     [("add", {"a": 1}), ("get_weather", {"city": "Oslo"})]),
    ('{"name": "add", "parameters": {"a": 1}}\n{"name": "add", "parameters": {"a": 2}}\n',
     [("add", {"a": 1}), ("add", {"a": 2})]),
    ('[{"name": "add", "parameters": {"a": 1}}]', [("add", {"a": 1})]),
])
def test_json_calls(text, expected):
    assert pairs(parse_json_calls(text)) == expected


@pytest.mark.parametrize("text", [
    '{"name": "add", "parameters": {"a": 1}', '{"parameters": {}}', '{"name": "add", "parameters": [1]}',
    '{"name": "add"} and then some prose', '"add"', "", '{"name": 3, "parameters": {}}',
])
def test_json_non_calls(text):
    assert parse_json_calls(text) is None


def test_function_tags_with_text_around():
    content, calls = parse_function_tags(
        'Sure. <function=get_weather>{"city": "Paris"}</function> <function=add>{"a": 1}</function> Done.')
    assert pairs(calls) == [("get_weather", {"city": "Paris"}), ("add", {"a": 1})]
    assert content == "Sure.   Done."


@pytest.mark.parametrize("text", [
    "<function=add>{oops}</function>", "<function=add>{\"a\": 1}", "no tags here", "<function=add></function>",
    '<function=add>{"a": 1}</function><function=add>{"a":',
])
def test_function_tags_malformed(text):
    assert parse_function_tags(text) is None


def test_pythonic_list():
    calls = parse_pythonic_calls('[get_weather(city="San Francisco", days=3), add(a=1, b=-2.5, '
                                 'opts={"x": [1, None, True]})]')
    assert pairs(calls) == [("get_weather", {"city": "San Francisco", "days": 3}),
                            ("add", {"a": 1, "b": -2.5, "opts": {"x": [1, None, True]}})]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id


@pytest.mark.parametrize("text", [
    "[add(1, 2)]", "[add(a=__import__('os').system('echo pwned'))]", "[add(a=x)]", "[]", "add(a=1)",
    "[add(a=1), 3]", "[add(**kw)]", "[1, 2]", "[add(a=1]",
])
def test_pythonic_refuses_what_is_not_a_literal_call_list(text):
    assert parse_pythonic_calls(text) is None


def test_builtin_query_call():
    call = parse_builtin_call('brave_search.call(query="latest price of 1oz gold")')
    assert (call.name, call.arguments) == ("brave_search", {"query": "latest price of 1oz gold"})
    assert parse_builtin_call('os.call(query="x")') is None
    assert parse_builtin_call("print(1)") is None


@pytest.mark.parametrize(("text", "tag", "expected"), [
    ('{"name": "add", "parameters": {"a": 1}}', False, [("add", {"a": 1})]),
    ('  \n[add(a=1), get_weather(city="Oslo")]', False, [("add", {"a": 1}), ("get_weather", {"city": "Oslo"})]),
    ('<function=add>{"a": 1}</function>', False, [("add", {"a": 1})]),
    ('{"name": "add", "parameters": {"a": 1}}', True, [("add", {"a": 1})]),
    ('wolfram_alpha.call(query="100th decimal of pi")', True, [("wolfram_alpha", {"query": "100th decimal of pi"})]),
    ("print(7 * 6)\n", True, [("code_interpreter", {"code": "print(7 * 6)"})]),
])
def test_parser_picks_the_format(text, tag, expected):
    reply = ToolCallParser(NAMES).parse(text, python_tag=tag)
    assert pairs(reply.calls) == expected and reply.content == ""


@pytest.mark.parametrize(("text", "tag", "warns"), [
    ("Hello there", False, False),
    ('{"name": "add", "parameters": {"a": 1}', False, True),  # cut off
    ('{"name": "unknown_tool", "parameters": {}}', False, True),  # a tool the request did not define
    ("[1, 2, 3] are numbers", False, True),
    ("<function=add>{broken</function>", False, True),
    ('{"answer": 42}', False, True),
])
def test_malformed_calls_stay_text_with_a_warning(text, tag, warns, caplog):
    with caplog.at_level(logging.WARNING, logger="llamarun.tools.parse"):
        reply = ToolCallParser(NAMES).parse(text, python_tag=tag)
    assert reply.calls == [] and reply.content == text
    assert bool(caplog.records) == warns


def test_code_after_python_tag_needs_the_code_interpreter_tool():
    assert ToolCallParser(["add"]).parse("print(1)", python_tag=True).calls == []
