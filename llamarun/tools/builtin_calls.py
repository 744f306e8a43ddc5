"""Meta's built-in tools after `<|python_tag|>`: `brave_search.call(query="...")`, `wolfram_alpha.call(...)`,
and the code interpreter, whose call is the code itself.

The query form is parsed with `ast` (never evaluated). Code becomes a `code_interpreter` call with a
`code` argument, as OpenAI-style clients define that tool.
"""

from __future__ import annotations

import ast

from llamarun.chat.messages import ToolCall
from llamarun.tools.calls import make_call
from llamarun.tools.pythonic import dotted_name, literal_keywords

QUERY_TOOLS = ("brave_search", "wolfram_alpha", "photogen")
CODE_INTERPRETER = "code_interpreter"


def parse_builtin_call(text: str) -> ToolCall | None:
    """`tool.call(query="...")` for a built-in query tool, or None."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    node = tree.body
    if not isinstance(node, ast.Call):
        return None
    name = dotted_name(node.func)
    if name is None or not name.endswith(".call") or name[: -len(".call")] not in QUERY_TOOLS:
        return None
    arguments = literal_keywords(node)
    return None if arguments is None else make_call(name[: -len(".call")], arguments)


def code_call(text: str) -> ToolCall | None:
    """Code after <|python_tag|> as a code_interpreter call; None when there is no code."""
    code = text.strip()
    return make_call(CODE_INTERPRETER, {"code": code}) if code else None
