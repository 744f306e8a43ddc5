"""The chat data model (Message, ToolCall) and the ChatTemplate interface that turns a chat into a prompt.

Messages arrive from many edges (the OpenAI and Ollama servers, the CLI, the Python API), as our own
dataclasses or as plain dicts. `parse_messages` is the one place that validates them, so templates can
trust what they get.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from llamarun.errors import LlamarunError
from llamarun.text.tokenizer import Tokenizer

Role = Literal["system", "user", "assistant", "tool"]

# "ipython" is Meta's name for the tool-result role; it is accepted here, and only the Llama 3 formatter
# (llama3_format.py) writes it, so the rest of llamarun knows one name.
_ROLE_ALIASES: dict[str, Role] = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "ipython": "tool",
}


@dataclass(frozen=True)
class ToolCall:
    """One function call made by the assistant: a name and its JSON arguments (OpenAI style)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Message:
    """One turn of a chat. The tool-result role is always "tool"; `name` is the speaker's (or tool's) name."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


class ChatTemplate(ABC):
    """Turns a list of messages into the prompt a model expects."""

    @abstractmethod
    def render(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> str:
        """The prompt as text (control tokens written out), for display and debugging."""

    @abstractmethod
    def encode(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        tokenizer: Tokenizer,
        *,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> list[int]:
        """The prompt token ids the model sees."""


def parse_messages(messages: Sequence[Message | Mapping[str, Any]]) -> list[Message]:
    """Validate a chat given as `Message`s or plain dicts and return it as `Message`s."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise LlamarunError(
            f"messages must be a list of messages, got {type(messages).__name__}",
            hint='pass e.g. [{"role": "user", "content": "Hello"}]',
        )
    if not messages:
        raise LlamarunError("the chat has no messages", hint="send at least one user message")
    return [_parse_one(i, m) for i, m in enumerate(messages)]


def _parse_one(index: int, message: Message | Mapping[str, Any]) -> Message:
    where = f"message {index}"
    if isinstance(message, Message):
        # Re-validate: dataclasses do not check their field types, and callers can build bad ones.
        message = {
            "role": message.role,
            "content": message.content,
            "tool_calls": list(message.tool_calls),
            "tool_call_id": message.tool_call_id,
            "name": message.name,
        }
    if not isinstance(message, Mapping):
        raise LlamarunError(
            f"{where} must be a dict with 'role' and 'content', got {type(message).__name__}",
            hint='write it as {"role": "user", "content": "..."}',
        )
    raw_role = message.get("role")
    if not isinstance(raw_role, str) or raw_role not in _ROLE_ALIASES:
        raise LlamarunError(
            f"{where} has unknown role {raw_role!r}",
            hint="use one of system, user, assistant, tool (or ipython)",
        )
    role = _ROLE_ALIASES[raw_role]
    tool_calls = _parse_tool_calls(where, message.get("tool_calls"))
    if tool_calls and role != "assistant":
        raise LlamarunError(
            f"{where} has tool_calls but role {raw_role!r}", hint="only assistant turns call tools"
        )
    content = message.get("content")
    if content is None and tool_calls:
        # OpenAI clients send content=null on an assistant turn that only calls tools.
        content = ""
    if not isinstance(content, str):
        raise LlamarunError(
            f"{where} content must be a string, got {type(content).__name__}",
            hint="send the text of the message as a plain string",
        )
    tool_call_id = message.get("tool_call_id")
    if tool_call_id is not None and not isinstance(tool_call_id, str):
        raise LlamarunError(
            f"{where} tool_call_id must be a string", hint="copy the id of the tool call it answers"
        )
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise LlamarunError(f"{where} name must be a string", hint="give the speaker's or tool's name as text")
    return Message(role=role, content=content, tool_calls=tool_calls, tool_call_id=tool_call_id, name=name)


def _parse_tool_calls(where: str, raw: Any) -> tuple[ToolCall, ...]:
    if raw is None:
        return ()
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence):
        raise LlamarunError(
            f"{where} tool_calls must be a list", hint='write [{"name": ..., "arguments": {...}}]'
        )
    return tuple(_parse_tool_call(f"{where} tool call {i}", call) for i, call in enumerate(raw))


def _parse_tool_call(where: str, call: Any) -> ToolCall:
    if isinstance(call, ToolCall):
        call = {"name": call.name, "arguments": call.arguments, "id": call.id}
    if not isinstance(call, Mapping):
        raise LlamarunError(f"{where} must be a dict", hint='write {"name": ..., "arguments": {...}}')
    # Accept both the flat form {"name", "arguments"} and OpenAI's {"type": "function", "function": {...}}.
    body = call.get("function", call)
    if not isinstance(body, Mapping):
        raise LlamarunError(
            f"{where} has a 'function' that is not a dict", hint="follow the OpenAI tool_calls form"
        )
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise LlamarunError(f"{where} has no function name", hint='give it a "name"')
    arguments = body.get("arguments", {})
    if isinstance(arguments, str):
        # OpenAI sends arguments as a JSON string; templates and Meta's format want the object.
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise LlamarunError(
                f"{where} ({name}) has arguments that are not valid JSON: {exc.msg}",
                hint="send arguments as a JSON object or a JSON-encoded string of one",
            ) from None
    if not isinstance(arguments, Mapping):
        raise LlamarunError(
            f"{where} ({name}) arguments must be a JSON object, got {type(arguments).__name__}",
            hint='write e.g. {"city": "Paris"}',
        )
    call_id = call.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise LlamarunError(f"{where} ({name}) id must be a string", hint="omit it or pass the id as text")
    return ToolCall(name=name, arguments=dict(arguments), id=call_id)
