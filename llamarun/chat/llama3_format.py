"""Llama 3.x prompts built natively, token for token as Meta's `ChatFormat.encode_dialog_prompt` builds them.

A prompt is a list of pieces, each either a control token (encoded by id) or text (encoded with special
tokens disabled, so a user who types '<|eot_id|>' gets ordinary text, not an end of turn). Each text piece
is encoded on its own, as Meta does: tokens never merge across a piece boundary, which is what makes
our ids identical to Meta's. `render` joins the same pieces, so text and ids cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date
from typing import Any

from llamarun.chat.messages import ChatTemplate, Message, ToolCall, parse_messages
from llamarun.errors import LlamarunError
from llamarun.text.tokenizer import Tokenizer

BEGIN_OF_TEXT = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
EOM = "<|eom_id|>"
PYTHON_TAG = "<|python_tag|>"

# Meta's built-in tools. The search-like ones are called as `name.call(query="...")`; the code interpreter's
# call is the code itself, after <|python_tag|>.
_QUERY_TOOLS = ("brave_search", "wolfram_alpha", "photogen")
_CODE_INTERPRETER = "code_interpreter"
_BUILTIN_TOOLS = (*_QUERY_TOOLS, _CODE_INTERPRETER)

# The knowledge cutoff every Llama 3.1/3.2/3.3 Instruct model was trained to see in its system turn.
_KNOWLEDGE_CUTOFF = "December 2023"

Piece = tuple[bool, str]  # (is a control token, text)


class Llama3ChatFormat(ChatTemplate):
    """The Llama 3.x Instruct prompt format.

    With `include_default_system`, the system turn starts with the knowledge-cutoff and today's-date lines
    the official template writes ("Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n"),
    followed by the user's own system prompt if there is one. `today` fixes the date (default: today).
    Assistant turns that call tools end with <|eom_id|>, as the model itself ends them.
    """

    def __init__(self, include_default_system: bool = False, today: date | None = None) -> None:
        self.include_default_system = include_default_system
        self.today = today

    def pieces(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> list[Piece]:
        """The prompt as control-token and text pieces, in order."""
        chat = self._with_system_preamble(parse_messages(messages), tools)
        out: list[Piece] = [(True, BEGIN_OF_TEXT)]
        for message in chat:
            out.extend(_message_pieces(message))
        if add_generation_prompt:
            out.extend(_header("assistant"))
        return out

    def render(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> str:
        """The prompt as text, control tokens written out."""
        pieces = self.pieces(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        return "".join(text for _, text in pieces)

    def encode(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        tokenizer: Tokenizer,
        *,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> list[int]:
        """Prompt ids: control tokens by id, text with special tokens disabled."""
        ids: list[int] = []
        for is_special, text in self.pieces(
            messages, add_generation_prompt=add_generation_prompt, tools=tools
        ):
            if is_special:
                token_id = tokenizer.token_to_id(text)
                if token_id is None:
                    raise LlamarunError(
                        f"the tokenizer has no {text} token, so it cannot use the Llama 3 chat format",
                        hint="use the model's own chat template or a raw prompt",
                    )
                ids.append(token_id)
            elif text:
                ids.extend(tokenizer.encode(text, add_bos=False, allow_special=False))
        return ids

    def _with_system_preamble(self, chat: list[Message], tools: list[dict] | None) -> list[Message]:
        preamble = self._system_preamble(tools)
        if preamble and chat[0].role == "system":
            own = chat[0].content
            # With tools, Meta's reference ends the system turn with a newline after the user's own prompt.
            tail = "\n" if tools is not None and own else ""
            chat = [replace(chat[0], content=preamble + own + tail), *chat[1:]]
        elif preamble:
            chat = [Message(role="system", content=preamble), *chat]
        custom = [t for t in tools or [] if _tool_name(0, t) not in _BUILTIN_TOOLS]
        if custom:
            # Meta's JSON tool format: the definitions in a user turn of their own, before the first user
            # turn, so every turn of a conversation shares the same prompt prefix (and its cache).
            at = next((i for i, m in enumerate(chat) if m.role == "user"), len(chat))
            chat.insert(at, Message(role="user", content=_custom_tools_prompt(custom)))
        return chat

    def _system_preamble(self, tools: list[dict] | None) -> str:
        if tools is not None and (
            isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence)
        ):
            raise LlamarunError(
                "tools must be a list of tool definitions", hint="pass OpenAI-style tool schemas"
            )
        names = [_tool_name(i, t) for i, t in enumerate(tools or [])]
        text = ""
        if tools is not None:
            text += "Environment: ipython\n"
            # The code interpreter is switched on by the Environment line alone; with no Tools line,
            # Meta's reference leaves the line empty.
            listed = [n for n in names if n in _QUERY_TOOLS]
            text += f"Tools: {', '.join(listed)}\n" if listed else "\n"
        if self.include_default_system or tools is not None:
            day = self.today or date.today()
            text += f"Cutting Knowledge Date: {_KNOWLEDGE_CUTOFF}\nToday Date: {day.strftime('%d %b %Y')}\n\n"
        return text


def _custom_tools_prompt(custom: list[dict]) -> str:
    """Meta's instructions for JSON custom tools (llama-models' Llama 3.1 prompt format), each tool as JSON."""
    return (
        "Answer the user's question by making use of the following functions if needed.\n"
        "If none of the function can be used, please say so.\n"
        "Here is a list of functions in JSON format:\n"
        + "".join(json.dumps(t, indent=4, ensure_ascii=False) + "\n" for t in custom)
        + "\nReturn function calls in JSON format."
    )


def _header(role: str) -> list[Piece]:
    return [(True, START_HEADER), (False, role), (True, END_HEADER), (False, "\n\n")]


def _message_pieces(message: Message) -> list[Piece]:
    # Meta's format calls the tool-result role "ipython"; everywhere else in llamarun it is "tool".
    out = _header("ipython" if message.role == "tool" else message.role)
    calls = message.tool_calls
    # Built-in calls (code, brave_search, wolfram_alpha) follow <|python_tag|>, as the model writes them and as
    # Meta's prompt-format document and its Hugging Face template re-encode them (llama-models' ChatFormat
    # code tags only code); custom JSON calls are untagged, as in ChatFormat.
    if calls and calls[0].name in _BUILTIN_TOOLS:
        out.append((True, PYTHON_TAG))
    out.append((False, message.content))
    out.extend((False, _tool_call_text(call)) for call in calls)
    out.append((True, EOM if calls else EOT))
    return out


def _tool_call_text(call: ToolCall) -> str:
    if call.name in _QUERY_TOOLS:
        query = call.arguments.get("query")
        if not isinstance(query, str):
            raise LlamarunError(
                f"the {call.name} tool call needs a string 'query' argument", hint='pass {"query": "..."}'
            )
        return f'{call.name}.call(query="{query}")'
    if call.name == _CODE_INTERPRETER:
        code = call.arguments.get("code")
        if not isinstance(code, str):
            raise LlamarunError(
                "the code_interpreter tool call needs a string 'code' argument", hint='pass {"code": "..."}'
            )
        return code
    # Custom tools: Meta's JSON form, with json.dumps defaults (ASCII escapes, ", " and ": " separators).
    return json.dumps({"type": "function", "name": call.name, "parameters": call.arguments})


def _tool_name(index: int, tool: Any) -> str:
    if isinstance(tool, Mapping):
        body = tool.get("function", tool)
        name = body.get("name") if isinstance(body, Mapping) else None
        if isinstance(name, str) and name:
            return name
    raise LlamarunError(
        f"tool {index} has no function name",
        hint='pass OpenAI-style tools: {"type": "function", "function": {"name": ..., "parameters": {...}}}',
    )
