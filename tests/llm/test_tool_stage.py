"""The tool-call stream stage: calls split across chunks at every position never leak into content."""

from __future__ import annotations

import itertools
import json

import pytest

from llamarun.llm.text_stream import StreamChunk
from llamarun.llm.tool_stage import ToolCallStage, tool_stage_factory
from llamarun.sampling.params import SamplingParams
from llamarun.tools.parse import ToolCallParser

NAMES = ["get_weather", "add", "brave_search", "code_interpreter"]
TAG = 128010

CALLS = {
    "json": ('{"name": "get_weather", "parameters": {"city": "Zürich"}}', [("get_weather", {"city": "Zürich"})]),
    "json_two": ('\n{"name": "add", "arguments": {"a": 1}};{"name": "add", "arguments": {"a": 2}}',
                 [("add", {"a": 1}), ("add", {"a": 2})]),
    "pythonic": ('[get_weather(city="Oslo"), add(a=1, b=2)]', [("get_weather", {"city": "Oslo"}),
                                                              ("add", {"a": 1, "b": 2})]),
    "function_tag": ('<function=add>{"a": 1}</function>', [("add", {"a": 1})]),
}


def run(stage: ToolCallStage, pieces: list[str], tag_first: bool = False) -> tuple[list[str], StreamChunk]:
    """Feed `pieces` as chunks (the last one finished); the texts passed on and the last chunk."""
    out = []
    for k, text in enumerate(pieces):
        ids = [TAG] if tag_first and k == 0 else [1]
        chunk = stage.feed(StreamChunk(text, ids, [], finished=k == len(pieces) - 1,
                                       finish_reason="stop" if k == len(pieces) - 1 else None))
        out.append(chunk.text)
        assert chunk.tool_calls == [] or k == len(pieces) - 1
    return out, chunk


def splits(text: str, parts: int):
    """Every way to cut `text` into `parts` pieces (empty pieces included)."""
    for cuts in itertools.combinations_with_replacement(range(len(text) + 1), parts - 1):
        bounds = (0, *cuts, len(text))
        yield [text[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_calls_split_at_every_position(name):
    text, expected = CALLS[name]
    for pieces in itertools.chain(splits(text, 2), splits(text, 3) if len(text) < 45 else ()):
        out, last = run(ToolCallStage(ToolCallParser(NAMES)), [*pieces, ""])
        assert "".join(out) == "", pieces  # nothing of the call reached content
        assert [(c.name, c.arguments) for c in last.tool_calls] == expected


def test_text_before_a_function_tag_streams_and_the_tag_never_does():
    text = 'Let me check <the> weather. <function=get_weather>{"city": "Oslo"}</function>'
    for pieces in splits(text, 2):
        out, last = run(ToolCallStage(ToolCallParser(NAMES)), [*pieces, ""])
        assert "".join(out) == "Let me check <the> weather. "
        assert all("<function" not in t and "}" not in t for t in out)
        assert [c.name for c in last.tool_calls] == ["get_weather"]
    # Content is released as soon as it cannot be a tag: the first chunk is not held to the end.
    out, _ = run(ToolCallStage(ToolCallParser(NAMES)), ["Let me check ", "<the> weather.", ""])
    assert out[0] == "Let me check " and out[1] == "<the> weather."


@pytest.mark.parametrize("text", ["Hello, world! <b>bold</b> [link]", "  42 is {the} answer", "<func is not a tag"])
def test_plain_text_is_unchanged_at_every_split(text):
    for pieces in splits(text, 2):
        out, last = run(ToolCallStage(ToolCallParser(NAMES)), [*pieces, ""])
        assert "".join(out) == text and last.tool_calls == []


@pytest.mark.parametrize("text", ['{"name": "get_weather", "parameters": {"city": "Oslo"',
                                  '[get_weather(city="Oslo")', '<function=add>{"a": </function>',
                                  '{"name": "rm_rf", "parameters": {}}'])
def test_malformed_calls_come_back_whole_as_text(text):
    for pieces in splits(text, 2):
        out, last = run(ToolCallStage(ToolCallParser(NAMES)), [*pieces, ""])
        assert "".join(out) == text and last.tool_calls == []
        assert all(t == "" for t in out[:-1]) or not text.startswith(("{", "["))


def test_python_tag_token_marks_builtin_calls_and_code():
    for text, expected in [('brave_search.call(query="gold price")', ("brave_search", {"query": "gold price"})),
                           ("print(6 * 7)", ("code_interpreter", {"code": "print(6 * 7)"}))]:
        for pieces in splits(text, 2):
            out, last = run(ToolCallStage(ToolCallParser(NAMES), python_tag_id=TAG), ["", *pieces], tag_first=True)
            assert "".join(out) == ""
            assert [(c.name, c.arguments) for c in last.tool_calls] == [expected]


def test_factory_finds_the_python_tag_of_the_tokenizer():
    class Tok:
        special_ids = frozenset({TAG})

        def token_to_id(self, text):
            return TAG if text == "<|python_tag|>" else None

    stage = tool_stage_factory([{"type": "function", "function": {"name": "add"}}], Tok())(SamplingParams())
    assert stage.python_tag_id == TAG and stage.parser.names == {"add"}
    _, last = run(stage, ['{"name": "add", "parameters": {"a": 1}}', ""])
    assert json.loads(json.dumps(last.tool_calls[0].arguments)) == {"a": 1}
