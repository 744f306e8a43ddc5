"""A model's own Jinja chat template (GGUF `tokenizer.chat_template`, HF `tokenizer_config.json`).

Templates from the Hub are untrusted code written against Transformers' renderer, so we render them the
way Transformers does (same environment options, helpers and variables) inside Jinja's immutable sandbox.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils

from llamarun.chat.messages import ChatTemplate, Message, parse_messages
from llamarun.errors import LlamarunError
from llamarun.text.tokenizer import Tokenizer


class _TemplateRaised(jinja2.TemplateError):
    """What a template's `raise_exception(...)` throws: a refusal with the template's own words."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's built-in tojson HTML-escapes '<', '>' and '&' and forces ASCII; templates expect plain JSON.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _SafeNamespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names, so a template cannot reach Python internals through it."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _SafeNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


class _GenerationTag(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (HF's assistant-mask marker): renders the body.

    We do not compute assistant masks; the tag only has to parse so such templates work.
    """

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        # A scope keeps `set` inside the block local, as Transformers' call-block does.
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationTag],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _SafeNamespace
    return env


class JinjaChatTemplate(ChatTemplate):
    """Renders a chat with a model's Jinja template, exactly as Transformers' `apply_chat_template` would.

    `special_tokens` adds more template variables (e.g. {"pad_token": "<pad>"}), like the special-token map
    Transformers passes. Messages reach the template as HF templates expect them (role, content, name,
    tool_calls, tool_call_id).
    """

    def __init__(
        self,
        source: str,
        *,
        bos_token: str | None,
        eos_token: str | None,
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(source, str) or not source.strip():
            raise LlamarunError("the chat template is empty", hint="use the model's template or a raw prompt")
        self.source = source
        env = _environment()
        try:
            tree = env.parse(source)
            self._template = env.from_string(tree)
        except jinja2.TemplateSyntaxError as exc:
            raise LlamarunError(
                f"the model's chat template has a syntax error at line {exc.lineno}: {exc.message}",
                hint="fix the template or pass a raw prompt",
            ) from None
        # Templates with no reference to `tools` would silently drop them; we refuse instead.
        self.supports_tools = "tools" in jinja2.meta.find_undeclared_variables(tree)
        self._variables: dict[str, str] = dict(special_tokens or {})
        # A missing token must stay undefined (renders as ""), never the string "None".
        if bos_token is not None:
            self._variables["bos_token"] = bos_token
        if eos_token is not None:
            self._variables["eos_token"] = eos_token

    def render(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> str:
        """The prompt text the template writes for `messages`."""
        chat = [template_message(m) for m in parse_messages(messages)]
        if tools is not None:
            if not self.supports_tools:
                raise LlamarunError(
                    "this model's chat template has no place for tool definitions",
                    hint="drop `tools` or use a model whose template supports tool calling",
                )
            tools = _plain_json(tools, "tools")
            if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
                raise LlamarunError(
                    "tools must be a list of JSON objects", hint="pass OpenAI-style tool schemas"
                )
        variables = {
            **self._variables,
            "messages": chat,
            "tools": tools,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
            "date_string": datetime.now().strftime("%d %b %Y"),
        }
        try:
            return self._template.render(**variables)
        except _TemplateRaised as exc:
            raise LlamarunError(
                f"the model's chat template rejected this chat: {exc.message}",
                hint="change the conversation to fit the template's rules",
            ) from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            # A template that breaks on this input (e.g. concatenating a missing field) is the input's
            # problem from the user's side; report it in one line.
            raise LlamarunError(
                f"the model's chat template failed on this chat: {exc}",
                hint="check the roles and order of the messages, or pass a raw prompt",
            ) from None

    def encode(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        tokenizer: Tokenizer,
        *,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> list[int]:
        """Prompt ids: the rendered text with its control tokens, and bos added once if the model wants it."""
        text = self.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        ids = tokenizer.encode(text, add_bos=False, allow_special=True)
        bos = tokenizer.bos_id
        # Templates for bos-using models usually write bos_token themselves; add it only when they did not.
        if tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids


def template_message(message: Message) -> dict[str, Any]:
    """A message as HF-style templates see it (role, content, name, tool_calls, tool_call_id)."""
    out: dict[str, Any] = {
        "role": message.role,
        "content": message.content,
    }
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            entry: dict[str, Any] = {
                "type": "function",
                "function": {"name": call.name, "arguments": _plain_json(call.arguments, call.name)},
            }
            if call.id is not None:
                entry["id"] = call.id
            calls.append(entry)
        out["tool_calls"] = calls
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _plain_json(value: Any, where: str) -> Any:
    """A fresh copy of JSON data; anything else is refused, because the sandbox should see plain data only."""
    if value is None or isinstance(value, bool):
        return value
    # Subclasses (str enums and the like) are cut back to the base type: the sandbox sees plain data only.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise LlamarunError(f"{where} has a non-string key", hint="use JSON objects with string keys")
        return {k: _plain_json(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, where) for v in value]
    raise LlamarunError(
        f"{where} holds a {type(value).__name__}, which is not JSON data",
        hint="pass tool schemas and arguments as JSON objects",
    )
