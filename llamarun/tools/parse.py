"""Which format a reply's calls are in, and the reply split into content and calls.

A reply is taken as calls only when the whole of it parses in one format and every call names a tool
the request defined: a reply that merely looks like a call (a JSON answer, a list in prose) stays text.
A reply that starts like a call but does not parse is kept as text with a logged warning, never an error.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from llamarun.chat.messages import ToolCall
from llamarun.tools.builtin_calls import CODE_INTERPRETER, code_call, parse_builtin_call
from llamarun.tools.function_tag import OPEN_TAG, parse_function_tags
from llamarun.tools.json_calls import parse_json_calls
from llamarun.tools.pythonic import parse_pythonic_calls

log = logging.getLogger(__name__)

# First characters (after leading whitespace) of a reply that may be a call with no <|python_tag|>.
CALL_STARTS = ("{", "[", OPEN_TAG)


@dataclass
class ParsedReply:
    """A reply split into its text content and its tool calls (empty when it called nothing)."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)


class ToolCallParser:
    """Parses replies for calls to the tools named `tool_names` (built-ins included when listed)."""

    def __init__(self, tool_names: Collection[str]) -> None:
        self.names = frozenset(tool_names)

    def parse(self, text: str, *, python_tag: bool = False) -> ParsedReply:
        """`text` as calls if it is calls, else as content (with a warning when it looked like a call)."""
        found = self._calls(text, python_tag)
        if found is None:
            if python_tag or looks_like_call(text):
                log.warning("a reply that looks like a tool call did not parse; kept as text: %.200r", text)
            return ParsedReply(text)
        content, calls = found
        unknown = sorted({c.name for c in calls} - self.names)
        if unknown:
            log.warning("a reply called undefined tools %s; kept as text", unknown)
            return ParsedReply(text)
        return ParsedReply(content, calls)

    def _calls(self, text: str, python_tag: bool) -> tuple[str, list[ToolCall]] | None:
        body = text.strip()
        if python_tag:
            # After <|python_tag|>: JSON custom calls, a built-in query call, else code to run.
            calls = parse_json_calls(body)
            if calls is None:
                builtin = parse_builtin_call(body)
                calls = [builtin] if builtin is not None else None
            if calls is None and CODE_INTERPRETER in self.names:
                code = code_call(body)
                calls = [code] if code is not None else None
            return None if calls is None else ("", calls)
        if body.startswith("{"):
            calls = parse_json_calls(body)
        elif body.startswith("["):
            calls = parse_pythonic_calls(body) or parse_json_calls(body)
        elif OPEN_TAG in body:
            return parse_function_tags(body)
        else:
            return None
        return None if calls is None else ("", calls)


def looks_like_call(text: str) -> bool:
    """Whether a reply starts the way a call starts (or holds a <function= tag)."""
    body = text.lstrip()
    return body.startswith(CALL_STARTS[:2]) or OPEN_TAG in body
