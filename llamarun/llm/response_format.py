"""Each API's way of asking for structured output, translated into one GrammarSpec.

Ollama (and `llamarun run --format`, and the Python API): `format` is "json" or a JSON schema.
OpenAI: `response_format` is {"type": "text"}, {"type": "json_object"} or
{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}. Anything else is a 400 naming the field;
a grammar is always enforced, so `strict: false` gets the same (stricter) output as `strict: true`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from llamarun.errors import RequestError
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams

if TYPE_CHECKING:
    from llamarun.llm.chat_service import ChatRequest
    from llamarun.llm.served import ServedModel


def ollama_format(value: Any, param: str = "format") -> GrammarSpec | None:
    """Ollama's `format`: "" or None (free text), "json" (any JSON object), a JSON schema, or a GrammarSpec."""
    if value is None or value == "" or isinstance(value, GrammarSpec):
        return value or None
    if value == "json":
        return GrammarSpec("json")
    if isinstance(value, dict):
        return _schema_spec(value, param)
    raise RequestError(f"invalid format {value!r}: give \"json\" or a JSON schema object", param=param)


def openai_response_format(value: dict[str, Any] | None) -> GrammarSpec | None:
    """OpenAI's `response_format` as a GrammarSpec (None for text)."""
    if value is None:
        return None
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json")
    if kind == "json_schema":
        body = value.get("json_schema")
        if not isinstance(body, dict) or not isinstance(body.get("schema"), dict):
            raise RequestError("response_format of type json_schema needs json_schema.schema, a JSON schema object",
                               param="response_format")
        if not isinstance(body.get("strict", False), (bool, type(None))):
            raise RequestError("json_schema.strict must be a boolean", param="response_format")
        return _schema_spec(body["schema"], "response_format")
    raise RequestError(f"response_format type {kind!r} is not supported: use 'text', 'json_object' or "
                       "'json_schema'", param="response_format")


def _schema_spec(schema: dict[str, Any], param: str) -> GrammarSpec:
    try:
        return GrammarSpec("json_schema", schema)
    except RequestError as err:
        raise RequestError(err.message, err.hint, param=param) from None


async def with_grammar(model: ServedModel, req: ChatRequest) -> SamplingParams:
    """`req.params` with the request's format as its grammar, compiled for `model` first (on a worker thread, so
    the engine thread finds it cached); a format the engine cannot enforce is a RequestError naming the field."""
    param = "response_format" if req.api == "openai" else "format"
    spec = ollama_format(req.format, param) or req.params.grammar
    if spec is None:
        return req.params
    if req.params.grammar is not None and req.params.grammar != spec:
        raise RequestError(f"{param} cannot be combined with a forced tool call (both constrain the output)",
                           param=param)
    try:
        await asyncio.to_thread(model.check_grammar, spec)
    except RequestError as err:
        raise RequestError(err.message, err.hint, param=param, code=err.code) from None
    return req.params.replace(grammar=spec)
