"""Parsed calls in each API's shape: OpenAI's arguments are a JSON string, Ollama's an object."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llamarun.chat.messages import ToolCall


def openai_tool_calls(calls: Sequence[ToolCall], *, with_index: bool = False) -> list[dict[str, Any]]:
    """`message.tool_calls` (or, `with_index`, the `delta.tool_calls` of a stream) of an OpenAI reply."""
    out = []
    for i, call in enumerate(calls):
        item: dict[str, Any] = {"index": i} if with_index else {}
        item |= {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
        out.append(item)
    return out


def ollama_tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """`message.tool_calls` of an Ollama reply."""
    return [{"id": call.id, "function": {"index": i, "name": call.name, "arguments": call.arguments}}
            for i, call in enumerate(calls)]
