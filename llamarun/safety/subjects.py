"""Which texts of a request the guards judge, as Subjects.

Input: the last user turn (kind "input") and every tool result after it (kind "tool_result", where indirect
prompt injection hides), each with the turns before it as history. Earlier turns are not judged again: they
were the input or the output of earlier requests. Raw prompts (completions, `--raw`) are each one "input".
Output: the reply so far (kind "output"), and each tool call the reply makes (kind "tool_call", the call
as JSON, since code in a code-interpreter call is where Code Shield looks).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from llamarun.chat.messages import Message as ChatMessage
from llamarun.chat.messages import ToolCall
from llamarun.safety.verdict import Message, Subject
from llamarun.text.tokenizer import Tokenizer


def history(messages: Sequence[ChatMessage]) -> tuple[Message, ...]:
    """The guards' view of chat messages: role and text (tool calls written as JSON)."""
    return tuple(Message(m.role, _text(m)) for m in messages)


def _text(m: ChatMessage) -> str:
    if not m.tool_calls:
        return m.content
    calls = "\n".join(call_text(c) for c in m.tool_calls)
    return f"{m.content}\n{calls}" if m.content else calls


def call_text(call: ToolCall) -> str:
    """A tool call as the guards read it: {"name": ..., "arguments": {...}}."""
    return json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)


def input_subjects(messages: Sequence[ChatMessage] | None, prompts: Sequence[str | list[int]] | None,
                   tokenizer: Tokenizer | None = None) -> list[Subject]:
    """The subjects of a request's input: see the module docstring."""
    if messages is None:
        texts = [p if isinstance(p, str) else _decode(p, tokenizer) for p in prompts or []]
        return [Subject("input", t) for t in texts if t.strip()]
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        return []
    seen = history(messages)
    out = [Subject("input", messages[last_user].content, seen[:last_user])]
    out += [Subject("tool_result", m.content, seen[:i]) for i, m in enumerate(messages)
            if i > last_user and m.role == "tool" and m.content.strip()]
    return out


def _decode(ids: list[int], tokenizer: Tokenizer | None) -> str:
    return tokenizer.decode(ids, skip_special=True) if tokenizer is not None else ""


def output_subject(text: str, context: tuple[Message, ...], partial: bool = False) -> Subject:
    """The reply so far, after the conversation it answers (`partial`: more of it is still to come)."""
    return Subject("output", text, context, partial=partial)


def call_subjects(calls: Sequence[ToolCall], context: tuple[Message, ...]) -> list[Subject]:
    """One subject per tool call; a code-interpreter call's code gets a language hint for Code Shield."""
    out = []
    for call in calls:
        code = call.arguments.get("code") if isinstance(call.arguments, dict) else None
        hint = "python" if call.name in ("code_interpreter", "python") or isinstance(code, str) else None
        out.append(Subject("tool_call", call_text(call), context, language_hint=hint))
    return out
