"""Ollama request bodies (pydantic) and their translation to SamplingParams, keep_alive and num_ctx.

Field names and meanings follow Ollama's API docs and its Python client. Unknown fields and options
are ignored, as Ollama does; fields that would change the answer but that llamarun cannot honour yet
(`format`, images, custom templates, `suffix`, thinking) are refused with a 400, never ignored.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llamarun.sampling.params import SamplingParams
from llamarun.server.errors import ApiError

MAX_INT = 2**63 - 1  # Go's int64: Ollama itself cannot take more
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
FOREVER_SECONDS = 10**9  # longer than any server lives: treated as "keep forever"

Int = Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]  # a JSON integer Go's int64 can hold


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Options(_Lenient):
    """`options`: the sampling and context settings Ollama accepts (others are ignored, as Ollama does)."""

    temperature: float | None = None
    top_k: Int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: Int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: Int | None = None
    stop: list[str] | str | None = None
    num_predict: Int | None = None
    num_ctx: Int | None = None


class ToolFunction(_Lenient):
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class ToolCall(_Lenient):
    function: ToolFunction


class Message(_Lenient):
    """One chat message."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class _GenerateBase(_Lenient):
    model: str = Field(min_length=1, max_length=4096)
    stream: bool = True
    options: Options | None = None
    format: str | dict[str, Any] | None = None
    keep_alive: float | str | None = None
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


class GenerateRequest(_GenerateBase):
    """POST /api/generate."""

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[Int] | None = None
    raw: bool = False
    images: list[str] | None = None


class ChatRequest(_GenerateBase):
    """POST /api/chat."""

    messages: list[Message] | None = None
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
        if isinstance(data, dict) and "model" not in data and isinstance(data.get("name"), str):
            data = {**data, "model": data["name"]}
        return data


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
    if req.format not in (None, ""):
        what = "JSON mode (format: \"json\")" if req.format == "json" else "a JSON schema format"
        raise ApiError(400, f"{what} is not supported yet: structured output is not implemented",
                       param="format")
    if req.think not in (None, False):
        raise ApiError(400, f"\"{req.model}\" does not support thinking", param="think")
    if images:
        raise ApiError(400, "images are not supported: llamarun runs text-only models", param="images")


def sampling_params(options: Options | None, logprobs: bool | None = None,
                    top_logprobs: int | None = None) -> tuple[SamplingParams, int | None]:
    """SamplingParams on Ollama's defaults, and the requested num_ctx; -1/-2 num_predict mean no limit."""
    o = options or Options()
    if o.num_ctx is not None and o.num_ctx < 1:
        raise ApiError(400, f"num_ctx={o.num_ctx} is below 1", param="options.num_ctx")
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


def chat_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages as the chat template takes them."""
    out = []
    for m in messages:
        if m.images:
            raise ApiError(400, "images are not supported: llamarun runs text-only models",
                           param="messages.images")
        msg: dict[str, Any] = {"role": m.role, "content": m.content or ""}
        if m.tool_calls:
            msg["tool_calls"] = [{"type": "function", "function": c.function.model_dump()}
                                 for c in m.tool_calls]
        if m.tool_name:
            msg["name"] = m.tool_name
        out.append(msg)
    return out
