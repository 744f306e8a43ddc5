"""Tools in `llamarun run`: `--tools FILE.json`, `--tool-choice`, and what happens when the model calls one.

The file holds tool definitions in OpenAI's shape (a list of `{"type": "function", "function": {...}}`,
or the flat `{"name", "description", "parameters"}`), the same the server takes. A call the model makes
is shown parsed, one line per call: `tool call: NAME {JSON arguments}`, never as the raw text the model
wrote. One-shot runs print the calls and stop (exit 0), so a script can act on them; the interactive chat
asks for each call's result (`result of NAME> `), sends it back in the `tool` role and lets the model
answer, as an agent loop would. `--tool-choice required` (or a tool's name) forces the reply to the
user's message to be a call, through the grammar; replies to tool results are left free ("auto"), or the
chat would call tools forever.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from llamarun.errors import LlamarunError

if TYPE_CHECKING:  # the CLI imports this module for its flags; the chat package (jinja2) loads only for a chat
    from llamarun.chat.messages import Message, ToolCall


def add_tool_flags(parser: Any) -> None:
    """The `--tools` and `--tool-choice` flags of `llamarun run`."""
    g = parser.add_argument_group("tools")
    g.add_argument("--tools", metavar="FILE.json",
                   help="tool definitions the model may call (OpenAI's tools list); calls are shown parsed")
    g.add_argument("--tool-choice", metavar="auto|none|required|NAME",
                   help="auto (default): the model decides; required or a tool's name: the reply must call it")


def read_json_file(flag: str, path: str, hint: str) -> Any:
    """The JSON in the file a flag names; a missing or unreadable file is a LlamarunError naming the flag."""
    file = Path(path)
    if not file.is_file():
        raise LlamarunError(f"{flag} {path}: no such file", hint)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LlamarunError(f"{flag} {path} is not a JSON file: {err}", hint) from None


def load_tools(path: str | None) -> list[dict[str, Any]] | None:
    """The tool definitions in `path` (None without the flag); a LlamarunError says what is wrong with them."""
    if path is None:
        return None
    data = read_json_file("--tools", path, "give a JSON file with a list of tool definitions")
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        data = data["tools"]  # a request body's "tools" field, pasted whole
    elif isinstance(data, dict):
        data = [data]  # one tool
    if not isinstance(data, list) or not data:
        raise LlamarunError(f"--tools {path} holds no tool definitions", "give a JSON list of tools")
    for i, tool in enumerate(data):
        _check_tool(path, i, tool)
    return data


def _check_tool(path: str, index: int, tool: Any) -> None:
    body = tool.get("function", tool) if isinstance(tool, dict) else None
    where = f"--tools {path}: tool {index}"
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
        raise LlamarunError(f"{where} has no function name",
                            'each tool is {"type": "function", "function": {"name": ..., "parameters": {...}}}')
    if "parameters" in body and not isinstance(body["parameters"], dict):
        raise LlamarunError(f"{where} ({body['name']}): parameters must be a JSON schema object")


def forced_schema(tools: list[dict[str, Any]] | None, choice: str | None) -> dict[str, Any] | None:
    """The call schema `--tool-choice` forces (None for auto/none or without it); checked against the tools."""
    from llamarun.tools.choice import forced_call_schema, resolve_tool_choice

    if choice is None:
        return None
    if tools is None:
        raise LlamarunError("--tool-choice needs --tools", "give the tool definitions with --tools FILE.json")
    named: str | dict[str, Any] = choice
    if choice not in ("auto", "none", "required"):
        named = {"type": "function", "function": {"name": choice}}
    return forced_call_schema(tools, resolve_tool_choice(named, tools))


def format_call(call: ToolCall) -> str:
    """One call as the terminal shows it: `tool call: NAME {arguments as JSON}`."""
    return f"tool call: {call.name} {json.dumps(call.arguments, ensure_ascii=False)}"


def print_calls(calls: Sequence[ToolCall], out: TextIO) -> None:
    for call in calls:
        out.write(format_call(call) + "\n")
    out.flush()


def assistant_turn(text: str, calls: Sequence[ToolCall]) -> Message:
    """The assistant's turn as the history keeps it: its text and its calls (re-encoded by the template)."""
    from llamarun.chat.messages import Message

    return Message("assistant", text, tool_calls=tuple(calls))


def ask_results(calls: Sequence[ToolCall], ask: Callable[[str], str]) -> list[Message] | None:
    """The user's result for each call, as `tool` messages; None when the user ends input (EOF) instead."""
    from llamarun.chat.messages import Message

    results = []
    for call in calls:
        try:
            text = ask(f"result of {call.name}> ")
        except EOFError:
            return None
        results.append(Message("tool", text, tool_call_id=call.id, name=call.name))
    return results
