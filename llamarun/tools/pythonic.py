"""Llama 3.2/3.3's pythonic tool calls: `[get_weather(city="Paris"), add(a=1, b=2)]`.

Parsed with `ast` and `ast.literal_eval` on each argument, never evaluated: only literal values
(strings, numbers, booleans, None, lists, dicts) are accepted, and only keyword arguments.
"""

from __future__ import annotations

import ast
from typing import Any

from llamarun.chat.messages import ToolCall
from llamarun.tools.calls import make_call


def parse_pythonic_calls(text: str) -> list[ToolCall] | None:
    """The calls of a pythonic list, or None when `text` is not exactly such a list."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls = []
    for element in tree.body.elts:
        call = _call(element)
        if call is None:
            return None
        calls.append(call)
    return calls


def dotted_name(node: ast.expr) -> str | None:
    """`f` or `module.f` as text; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def literal_keywords(node: ast.Call) -> dict[str, Any] | None:
    """A call's keyword arguments as literal values; None for positional or non-literal arguments."""
    if node.args or any(k.arg is None for k in node.keywords):
        return None
    try:
        return {k.arg: ast.literal_eval(k.value) for k in node.keywords}  # type: ignore[misc]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _call(node: ast.expr) -> ToolCall | None:
    if not isinstance(node, ast.Call):
        return None
    name = dotted_name(node.func)
    arguments = literal_keywords(node)
    if name is None or arguments is None:
        return None
    return make_call(name, arguments)
