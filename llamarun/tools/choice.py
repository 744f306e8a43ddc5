"""`tool_choice`: which calls a request allows, and the JSON schema that forces one.

"none" sends no tools to the prompt and parses nothing; "auto" lets the model choose; "required" and a
named function (`{"type": "function", "function": {"name": ...}}`) force a call through the grammar:
the call is Llama's JSON form `{"name": <name>, "parameters": <the tool's parameter schema>}`, one of
the tools' (anyOf) for "required".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llamarun.errors import RequestError
from llamarun.sampling.params import SamplingParams
from llamarun.tools.calls import tool_function, tool_names

Mode = Literal["none", "auto", "required", "function"]
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ToolChoice:
    """A validated tool_choice: its mode, and the function's name when one is named."""

    mode: Mode
    name: str | None = None


def resolve_tool_choice(choice: str | Mapping[str, Any] | None, tools: Sequence[Any] | None) -> ToolChoice:
    """Validate `choice` against `tools`; a RequestError (param "tool_choice") says what is wrong."""
    if choice is None:
        return ToolChoice("auto")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise RequestError(f"tool_choice '{choice}' is not one of none, auto, required or a function",
                               param="tool_choice")
        result = ToolChoice(choice)  # type: ignore[arg-type]
    else:
        body = choice.get("function") if isinstance(choice, Mapping) else None
        name = body.get("name") if isinstance(body, Mapping) else None
        if not isinstance(choice, Mapping) or choice.get("type", "function") != "function" \
                or not isinstance(name, str) or not name:
            raise RequestError('a named tool_choice must be {"type": "function", "function": {"name": ...}}',
                               param="tool_choice")
        result = ToolChoice("function", name)
    names = tool_names(tools)
    if result.mode in ("required", "function") and not names:
        raise RequestError(f"tool_choice '{result.name or result.mode}' needs tools, and none were given",
                           param="tool_choice")
    if result.name is not None and result.name not in names:
        raise RequestError(f"tool_choice names the function '{result.name}', which is not among the tools "
                           f"({', '.join(names)})", param="tool_choice")
    return result


def call_schema(tool: Any) -> dict[str, Any]:
    """The JSON schema of one Llama JSON call to `tool`: its name as a constant, its parameters' schema."""
    body = tool_function(tool)
    parameters = body.get("parameters")
    return {"type": "object",
            "properties": {"name": {"const": body["name"]},
                           "parameters": dict(parameters) if isinstance(parameters, Mapping) else _ANY_OBJECT},
            "required": ["name", "parameters"], "additionalProperties": False}


def forced_call_schema(tools: Sequence[Any] | None, choice: ToolChoice) -> dict[str, Any] | None:
    """The schema a forced call must match ("required": any tool's call; a name: that tool's); else None."""
    if choice.mode not in ("required", "function"):
        return None
    schemas = [call_schema(t) for t in tools or () if tool_names([t])
               and choice.name in (None, tool_function(t)["name"])]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def apply_forced_call(params: SamplingParams, schema: dict[str, Any] | None) -> SamplingParams:
    """`params` constrained to `schema` through the grammar engine (sampling/grammar_spec.py).

    The one place where a forced tool call meets grammar-constrained decoding. A build without it
    refuses the request instead of ignoring the tool_choice.
    """
    if schema is None:
        return params
    try:
        from llamarun.sampling.grammar_spec import GrammarSpec  # type: ignore[import-not-found]
    except ImportError:
        raise RequestError("tool_choice 'required' or a named function needs grammar-constrained decoding, "
                           "which this build lacks; use tool_choice 'auto'", param="tool_choice") from None
    return params.replace(grammar=GrammarSpec("json_schema", schema))
