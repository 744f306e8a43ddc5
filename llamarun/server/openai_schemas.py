"""OpenAI request bodies (pydantic) and their translation into the chat service's ChatRequest.

OpenAI's defaults apply here, not Ollama's: temperature 1, top_p 1, and no top-k, min-p or
repetition penalty unless a client sends the common extensions (`top_k`, `min_p`,
`repetition_penalty`, as vLLM accepts them). `response_format` (text, json_object, json_schema; on
completions too, as vLLM takes it) is enforced by a grammar. Unknown fields are ignored; fields that would
change the answer but are not implemented (`logit_bias`, image or audio content, `suffix`, `best_of`) are
refused with a 400. `tool_choice` is checked in tools/choice.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llamarun.chat.messages import Message, parse_messages
from llamarun.llm.chat_service import ChatRequest
from llamarun.llm.response_format import openai_response_format
from llamarun.sampling.params import SamplingParams
from llamarun.server.errors import ApiError
from llamarun.tools.choice import forced_call_schema, resolve_tool_choice

MAX_N = 16  # independent choices per request; each is a full generation on the engine
# Strict: JSON true is not 1, nor 2.0 or "2" an integer (OpenAI refuses them too).
Int = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
Float = Annotated[float, Field(strict=True)]  # integers are still numbers; true is not


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatMessage(_Lenient):
    """One message; content is a string or a list of parts, of which only text parts are supported."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _Common(_Lenient):
    model: str = Field(min_length=1, max_length=4096)
    max_tokens: Int | None = None
    temperature: Float | None = Field(default=None, ge=0, le=2)
    top_p: Float | None = Field(default=None, ge=0, le=1)
    n: Int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: Int | None = None
    presence_penalty: Float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: Float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Float] | None = None
    user: str | None = None
    # Extensions many OpenAI-compatible servers accept.
    top_k: Int | None = None
    min_p: Float | None = None
    repetition_penalty: Float | None = None


class ChatCompletionBody(_Common):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = None
    logprobs: bool = False
    top_logprobs: Int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionBody(_Common):
    """POST /v1/completions."""

    prompt: str | list[str] | list[Int] | list[list[Int]]
    logprobs: Int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: Int | None = None
    response_format: dict[str, Any] | None = None


def sampling_params(req: _Common, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    """SamplingParams on OpenAI's defaults; range errors raise SamplingParamsError (a 400)."""
    if req.logit_bias:
        raise ApiError(400, "logit_bias is not supported", param="logit_bias")
    given = {
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "top_k": req.top_k or 0, "min_p": req.min_p or 0.0,
        "repetition_penalty": 1.0 if req.repetition_penalty is None else req.repetition_penalty,
        "presence_penalty": req.presence_penalty or 0.0, "frequency_penalty": req.frequency_penalty or 0.0,
        "seed": req.seed, "max_tokens": max_tokens, "stop": req.stop if req.stop is not None else (),
        "logprobs": logprobs,
    }
    return SamplingParams(**given)


def chat_params(req: ChatCompletionBody) -> SamplingParams:
    """Sampling for a chat request, after refusing what is not implemented."""
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise ApiError(400, "max_tokens and max_completion_tokens disagree; give one", param="max_tokens")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    return sampling_params(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None)


def completion_params(req: CompletionBody) -> SamplingParams:
    """Sampling for a completion request, after refusing what is not implemented."""
    if req.suffix:
        raise ApiError(400, "suffix (fill-in-the-middle) is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise ApiError(400, "best_of other than n is not supported", param="best_of")
    if req.echo and req.logprobs is not None:
        raise ApiError(400, "echo with logprobs (prompt log-probabilities) is not supported", param="echo")
    return sampling_params(req, req.max_tokens, req.logprobs)


def _text(i: int, content: str | list[dict[str, Any]] | None) -> str:
    """A message's text; content parts other than text are refused (text-only models)."""
    if not isinstance(content, list):
        return content or ""
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"content part of type '{part.get('type')}' is not supported: "
                                "llamarun runs text-only models", param=f"messages.{i}.content")
        texts.append(part["text"])
    return "".join(texts)


def chat_messages(messages: list[ChatMessage]) -> list[Message]:
    """The chat's messages: text only, `developer` as `system`, `function` as `tool`, names and tool calls kept."""
    raw = [{"role": {"developer": "system", "function": "tool"}.get(m.role, m.role), "content": _text(i, m.content),
            "name": m.name, "tool_calls": m.tool_calls, "tool_call_id": m.tool_call_id}
           for i, m in enumerate(messages)]
    return parse_messages(raw)  # LlamarunError (a 400) names the message at fault


def chat_completion_request(body: ChatCompletionBody) -> ChatRequest:
    """A /v1/chat/completions body as the chat service's request (OpenAI's defaults)."""
    params = chat_params(body)
    choice = resolve_tool_choice(body.tool_choice, body.tools)
    tools = body.tools if body.tools and choice.mode != "none" else None
    return ChatRequest(body.model, messages=chat_messages(body.messages), tools=tools,
                       forced_call_schema=forced_call_schema(tools, choice),
                       format=openai_response_format(body.response_format), params=params, n=body.n,
                       strict_max_tokens=True, api="openai", given=given_fields(body))


def completion_request(body: CompletionBody) -> ChatRequest:
    """A /v1/completions body: raw prompts (text or token ids), no template."""
    return ChatRequest(body.model, prompts=prompt_list(body.prompt), params=completion_params(body), n=body.n,
                       format=openai_response_format(body.response_format), strict_max_tokens=True, api="openai",
                       given=given_fields(body))


# Request field -> the SamplingParams field it sets.
_SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                    "repetition_penalty": "repetition_penalty", "presence_penalty": "presence_penalty",
                    "frequency_penalty": "frequency_penalty", "seed": "seed", "stop": "stop",
                    "max_tokens": "max_tokens", "max_completion_tokens": "max_tokens"}


def given_fields(body: BaseModel) -> frozenset[str]:
    """The SamplingParams fields the client set (a created model's parameters fill the others)."""
    return frozenset(_SAMPLING_FIELDS[k] for k in body.model_fields_set
                     if k in _SAMPLING_FIELDS and getattr(body, k) is not None)


def prompt_list(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The prompts of a completion request: text, or token ids, one or many."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise ApiError(400, "the prompt is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]
