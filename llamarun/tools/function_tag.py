"""The `<function=name>{...}</function>` tool-call format (Llama 3.1's zero-shot custom format).

Tags may sit inside ordinary text; the text outside them is the reply's content. Each tag's body must
be a JSON object.
"""

from __future__ import annotations

import re

from llamarun.chat.messages import ToolCall
from llamarun.tools.calls import make_call, object_arguments

OPEN_TAG = "<function="
_TAG = re.compile(r"<function=([^>\s]+)>(.*?)</function>", re.DOTALL)


def parse_function_tags(text: str) -> tuple[str, list[ToolCall]] | None:
    """(content outside the tags, calls), or None when a tag is malformed or there is none."""
    calls: list[ToolCall] = []
    content: list[str] = []
    pos = 0
    for match in _TAG.finditer(text):
        arguments = object_arguments(match.group(2))
        if arguments is None or not match.group(2).strip():
            return None
        content.append(text[pos:match.start()])
        calls.append(make_call(match.group(1), arguments))
        pos = match.end()
    rest = text[pos:]
    if not calls or OPEN_TAG in rest:  # an unclosed or unparseable tag: not a clean call
        return None
    return ("".join(content) + rest).strip(), calls
