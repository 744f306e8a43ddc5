"""Ollama request bodies (pydantic) and their translation into the chat service's ChatRequest.

Field names and meanings follow Ollama's API docs and its Python client. Unknown fields and options
are ignored, as Ollama does; fields that would change the answer but that llamarun cannot honour yet
(images, custom templates, `suffix`, thinking) are refused with a 400; `format` ("json" or a JSON schema)
is enforced by a grammar (the chat service compiles it).
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llamarun.chat.messages import Message, ToolCall
from llamarun.llm.chat_service import ChatRequest
from llamarun.sampling.params import SamplingParams
from llamarun.server.errors import ApiError

MAX_INT = 2**63 - 1  # Go's int64: Ollama itself cannot take more
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MIN_NUM_CTX = 16  # below this no chat template and answer fit; refused before any model is touched
FOREVER_SECONDS = 10**9  # longer than any server lives: treated as "keep forever"

# A JSON integer Go's int64 can hold; strict, as Go is: true is not 1.
Int = Annotated[int, Field(strict=True, ge=-MAX_INT, le=MAX_INT)]
Float = Annotated[float, Field(strict=True)]  # integers are still numbers; true is not


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Options(_Lenient):
    """`options`: the sampling and context settings Ollama accepts (others are ignored, as Ollama does)."""

    temperature: Float | None = None
    top_k: Int | None = None
    top_p: Float | None = None
    min_p: Float | None = None
    repeat_penalty: Float | None = None
    repeat_last_n: Int | None = None
    presence_penalty: Float | None = None
    frequency_penalty: Float | None = None
    seed: Int | None = None
    stop: list[str] | str | None = None
    num_predict: Int | None = None
    num_ctx: Int | None = None


class ToolFunction(_Lenient):
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class OllamaToolCall(_Lenient):
    function: ToolFunction


class OllamaMessage(_Lenient):
    """One chat message."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None

    def to_message(self) -> Message:
        if self.images:
            raise ApiError(400, "images are not supported: llamarun runs text-only models", param="messages.images")
        calls = tuple(ToolCall(c.function.name, _arguments(c.function.arguments)) for c in self.tool_calls or ())
        return Message(self.role, self.content or "", calls, name=self.tool_name)


class _GenerateBase(_Lenient):
    model: str = Field(min_length=1, max_length=4096)
    stream: bool = True
    options: Options | None = None
    format: str | dict[str, Any] | None = None
    keep_alive: Float | str | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: Int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="before")
    @classmethod
    def _old_name_field(cls, data: Any) -> Any:
        # Older clients send "name" where newer ones send "model".
        if isinstance(data, dict) and "model" not in data and isinstance(data.get("name"), str):
            data = {**data, "model": data["name"]}
        return data


class GenerateBody(_GenerateBase):
    """POST /api/generate."""

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[Int] | None = None
    raw: bool = False
    images: list[str] | None = None


class ChatBody(_GenerateBase):
    """POST /api/chat."""

    messages: list[OllamaMessage] | None = None
    tools: list[dict[str, Any]] | None = None


class ModelRequest(_Lenient):
    """POST /api/show, DELETE /api/delete, POST /api/pull: a model name ("name" in older clients)."""

    model: str = Field(min_length=1, max_length=4096)
    verbose: bool = False
    insecure: bool = False
    stream: bool = True

    @model_validator(mode="before")
    @classmethod
    def _old_name_field(cls, data: Any) -> Any:
        return old_name_as_model(data)


def old_name_as_model(data: Any) -> Any:
    """Older Ollama clients send the model as "name": read it as "model" when that is missing."""
    if isinstance(data, dict) and "model" not in data and isinstance(data.get("name"), str):
        data = {**data, "model": data["name"]}
    return data


class CopyRequest(_Lenient):
    """POST /api/copy: a new name for a pulled model."""

    source: str = Field(min_length=1, max_length=4096)
    destination: str = Field(min_length=1, max_length=4096)


def parse_keep_alive(value: float | str | None) -> float | None:
    """Seconds to keep the model loaded (-1: forever), from a number of seconds or a Go duration ("5m")."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ApiError(400, f"invalid keep_alive {value!r}", param="keep_alive")
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _go_duration(text)
    else:
        seconds = float(value)
    if math.isnan(seconds):
        raise ApiError(400, f"invalid keep_alive {value!r}", param="keep_alive")
    if seconds < 0 or seconds >= FOREVER_SECONDS:
        return -1.0
    return seconds


def _go_duration(text: str) -> float:
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION.match(body, pos)
        if m is None:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ApiError(400, f"invalid keep_alive duration '{text}'",
                       param="keep_alive") from None
    return sign * total


def check_supported(req: _GenerateBase, images: bool = False) -> None:
    """Refuse, loudly, what would change the answer but is not implemented yet."""
    if req.think not in (None, False):
        raise ApiError(400, f"\"{req.model}\" does not support thinking", param="think")
    if images:
        raise ApiError(400, "images are not supported: llamarun runs text-only models", param="images")


def sampling_params(options: Options | None, logprobs: bool | None = None,
                    top_logprobs: int | None = None) -> tuple[SamplingParams, int | None]:
    """SamplingParams on Ollama's defaults, and the requested num_ctx; -1/-2 num_predict mean no limit."""
    o = options or Options()
    if o.num_ctx is not None and o.num_ctx < MIN_NUM_CTX:
        raise ApiError(400, f"num_ctx={o.num_ctx} is below {MIN_NUM_CTX}", param="options.num_ctx")
    max_tokens = o.num_predict
    if max_tokens is not None and max_tokens < 0:
        if max_tokens not in (-1, -2):
            raise ApiError(400, f"num_predict={max_tokens} is negative",
                           param="options.num_predict")  # -1: no limit, -2: fill the context
        max_tokens = None
    elif max_tokens == 0:
        raise ApiError(400, "num_predict=0 asks for no tokens", param="options.num_predict")
    given = {
        "temperature": o.temperature, "top_k": o.top_k, "top_p": o.top_p, "min_p": o.min_p,
        "repetition_penalty": o.repeat_penalty, "repeat_last_n": o.repeat_last_n,
        "presence_penalty": o.presence_penalty, "frequency_penalty": o.frequency_penalty, "seed": o.seed,
        "max_tokens": max_tokens, "stop": o.stop,
        "logprobs": (top_logprobs or 0) if logprobs or top_logprobs else None,
    }
    params = SamplingParams(**{k: v for k, v in given.items() if v is not None})  # SamplingParamsError -> 400
    return params, o.num_ctx


def given_fields(options: Options | None) -> frozenset[str]:
    """The SamplingParams fields `options` sets (a created model's parameters fill the others)."""
    from llamarun.store.model_defaults import PARAMETERS

    if options is None:
        return frozenset()
    return frozenset(PARAMETERS[k][0] for k in options.model_fields_set
                     if k in PARAMETERS and getattr(options, k) is not None)


def _arguments(value: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if value.strip() else {}
    except json.JSONDecodeError as err:
        raise ApiError(400, f"tool call arguments are not valid JSON: {err.msg}", param="messages") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "tool call arguments must be a JSON object", param="messages")
    return parsed


def chat_request(body: ChatBody) -> ChatRequest:
    """An /api/chat body as the chat service's request (Ollama's sampling defaults)."""
    check_supported(body)
    params, num_ctx = sampling_params(body.options, body.logprobs, body.top_logprobs)
    return ChatRequest(body.model, messages=[m.to_message() for m in body.messages or []], tools=body.tools or None,
                       format=body.format or None, params=params, num_ctx=num_ctx,
                       keep_alive=parse_keep_alive(body.keep_alive), api="ollama", given=given_fields(body.options))


def generate_request(body: GenerateBody) -> ChatRequest:
    """An /api/generate body: the prompt through the chat template (with `system`), or as is when `raw`."""
    check_supported(body, images=bool(body.images))
    if body.suffix:
        raise ApiError(400, "suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.template:
        raise ApiError(400, "custom templates are not supported: the model's own chat template is used",
                       param="template")
    params, num_ctx = sampling_params(body.options, body.logprobs, body.top_logprobs)
    req = ChatRequest(body.model, format=body.format or None, params=params, context=body.context, num_ctx=num_ctx,
                      keep_alive=parse_keep_alive(body.keep_alive), api="ollama", given=given_fields(body.options))
    if body.raw:
        req.prompts = [body.prompt or ""]
    else:
        system = [Message("system", body.system)] if body.system else []
        req.messages = [*system, Message("user", body.prompt or "")]
    return req
