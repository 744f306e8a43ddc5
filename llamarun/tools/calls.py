"""What every call parser shares: call ids, tool names from definitions, and argument checks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from llamarun.chat.messages import ToolCall


def new_call_id() -> str:
    """A fresh id for a parsed call, in OpenAI's `call_...` form."""
    return f"call_{uuid.uuid4().hex[:24]}"


def make_call(name: str, arguments: Mapping[str, Any]) -> ToolCall:
    """A parsed call with a fresh id."""
    return ToolCall(name=name, arguments=dict(arguments), id=new_call_id())


def tool_function(tool: Any) -> Mapping[str, Any]:
    """The function body of a tool definition: OpenAI's `{"type": "function", "function": {...}}` or flat."""
    if not isinstance(tool, Mapping):
        return {}
    body = tool.get("function", tool)
    return body if isinstance(body, Mapping) else {}


def tool_names(tools: Sequence[Any] | None) -> list[str]:
    """The function names the tools define, in order (definitions without a name are skipped)."""
    names = []
    for tool in tools or ():
        name = tool_function(tool).get("name")
        if isinstance(name, str) and name:
            names.append(name)
    return names


def object_arguments(value: Any) -> dict[str, Any] | None:
    """Call arguments as a dict: an object, or a JSON string holding one; None when they are neither."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            return None
    return dict(value) if isinstance(value, Mapping) else None
