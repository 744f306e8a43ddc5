"""Llama 3.1's JSON tool calls: `{"name": ..., "parameters": {...}}` (or `"arguments"`), one or several.

Several calls may follow each other separated by `;` or newlines, or come as one JSON list; Meta's own
form adds `"type": "function"`, which is ignored. The text must be nothing but calls: anything else
means the reply is not a call.
"""

from __future__ import annotations

import json
from typing import Any

from llamarun.chat.messages import ToolCall
from llamarun.tools.calls import make_call, object_arguments

_DECODER = json.JSONDecoder()
_SEPARATORS = " \t\r\n;"


def parse_json_calls(text: str) -> list[ToolCall] | None:
    """The calls `text` holds, or None when it is not only JSON calls."""
    values: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _SEPARATORS:
            pos += 1
        if pos == len(text):
            break
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        values.extend(value if isinstance(value, list) else [value])
    calls = [_call(v) for v in values]
    if not calls or any(c is None for c in calls):
        return None
    return calls  # type: ignore[return-value]


def _call(value: Any) -> ToolCall | None:
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    raw = value["parameters"] if "parameters" in value else value.get("arguments", {})
    arguments = object_arguments(raw)
    if not isinstance(name, str) or not name or arguments is None:
        return None
    return make_call(name, arguments)
