"""The OpenAI Responses API request (`POST /v1/responses`), the part that maps onto a chat: text in, text out.

`input` is a string or a list of messages (easy `{"role", "content"}` or `{"type": "message", ...}` items
with `input_text` / `output_text` parts); `instructions` becomes the system message; `max_output_tokens`,
`temperature` and `top_p` become sampling (OpenAI's defaults otherwise). Fields that would change the
answer but that llamarun does not do here (tools, structured `text.format`, `reasoning`, logprobs,
`truncation: auto`, `background`, stored prompts and conversations, images and files) are a 400 naming
the field. Responses are kept in memory for `previous_response_id` (bounded, lost on restart) unless
the request says `store: false`.
"""

from __future__ import annotations

import collections
import threading
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from llamarun.chat.messages import Message
from llamarun.llm.chat_service import ChatRequest
from llamarun.sampling.params import SamplingParams
from llamarun.server.errors import ApiError

Int = Annotated[int, Field(strict=True, ge=1, le=2**31)]
Float = Annotated[float, Field(strict=True)]
KEPT_RESPONSES = 1000  # conversations kept for previous_response_id, oldest dropped first
KEPT_CHARS = 64 * 2**20  # and at most this much text in all, so long conversations cannot fill memory
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = ("input_text", "output_text", "text")


class ResponsesBody(BaseModel):
    """POST /v1/responses."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=4096)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: Int | None = None
    temperature: Float | None = Field(default=None, ge=0, le=2)
    top_p: Float | None = Field(default=None, ge=0, le=1)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    # Refused unless empty or default: each would change what the model answers.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    top_logprobs: int | None = None
    include: list[str] | None = None
    truncation: str | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
    conversation: str | dict[str, Any] | None = None


def check_supported(body: ResponsesBody) -> None:
    """A 400 naming the first field set to something llamarun's Responses endpoint does not do."""
    fmt = (body.text or {}).get("format") or {"type": "text"}
    refused = [
        ("tools", bool(body.tools), "tools are not supported on /v1/responses yet; use /v1/chat/completions"),
        ("tool_choice", body.tool_choice not in (None, "auto", "none"), "tool_choice needs tools, not supported"),
        ("text.format", fmt.get("type") != "text", "structured output (text.format) is not supported"),
        ("reasoning", bool(body.reasoning), "reasoning settings are not supported: these models do not reason"),
        ("top_logprobs", bool(body.top_logprobs), "logprobs are not supported on /v1/responses"),
        ("include", bool(body.include), f"include {body.include} is not supported"),
        ("truncation", body.truncation not in (None, "disabled"), "only truncation 'disabled' is supported"),
        ("background", bool(body.background), "background responses are not supported"),
        ("prompt", body.prompt is not None, "stored prompts are not supported"),
        ("conversation", body.conversation is not None, "conversations are not supported; use previous_response_id"),
    ]
    for param, bad, message in refused:
        if bad:
            raise ApiError(400, message, param=param, code="unsupported_parameter")


def input_messages(body: ResponsesBody) -> list[Message]:
    """The request's own messages (no instructions, no earlier turns)."""
    if isinstance(body.input, str):
        return [Message("user", body.input)]
    out = []
    for i, item in enumerate(body.input):
        kind, role = item.get("type", "message"), item.get("role")
        if kind != "message" or role not in _ROLES:
            what = kind if kind != "message" else f"role '{role}'"
            raise ApiError(400, f"input[{i}]: {what} is not supported (only user, assistant, system and developer "
                                "messages with text)", param=f"input.{i}")
        out.append(Message(_ROLES[role], _text(i, item.get("content"))))
    if not out:
        raise ApiError(400, "input is empty", param="input")
    return out


def _text(i: int, content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"input[{i}].content must be text or a list of text parts", param=f"input.{i}.content")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ApiError(400, f"input[{i}]: content part '{kind}' is not supported: llamarun runs text-only "
                                "models", param=f"input.{i}.content")
        texts.append(part["text"])
    return "".join(texts)


def responses_request(body: ResponsesBody, earlier: list[Message]) -> ChatRequest:
    """The chat the response answers: instructions as the system message, earlier turns, then the input."""
    check_supported(body)
    system = [Message("system", body.instructions)] if body.instructions else []
    params = SamplingParams(temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=1.0 if body.top_p is None else body.top_p, top_k=0, repetition_penalty=1.0,
                            max_tokens=body.max_output_tokens)
    given = {name for name, value in (("temperature", body.temperature), ("top_p", body.top_p),
                                      ("max_tokens", body.max_output_tokens)) if value is not None}
    return ChatRequest(body.model, messages=[*system, *earlier, *input_messages(body)], params=params,
                       strict_max_tokens=True, api="openai", given=frozenset(given))


class ResponseMemory:
    """Finished conversations by response id, for `previous_response_id` (in memory, bounded)."""

    def __init__(self, limit: int = KEPT_RESPONSES, max_chars: int = KEPT_CHARS) -> None:
        self.limit, self.max_chars = limit, max_chars
        self._kept: collections.OrderedDict[str, tuple[int, list[Message]]] = collections.OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def keep(self, response_id: str, conversation: list[Message]) -> None:
        size = sum(len(m.content) for m in conversation)
        with self._lock:
            self._kept[response_id] = (size, conversation)
            self._chars += size
            while self._kept and (len(self._kept) > self.limit or self._chars > self.max_chars):
                self._chars -= self._kept.popitem(last=False)[1][0]

    def earlier(self, response_id: str | None) -> list[Message]:
        """The turns before this request (instructions excluded: each request gives its own, as OpenAI does)."""
        if response_id is None:
            return []
        with self._lock:
            found = self._kept.get(response_id)
        if found is None:
            raise ApiError(400, f"previous response '{response_id[:100]}' not found (responses are kept in memory "
                                f"for the last {self.limit} requests, and not across restarts)",
                           param="previous_response_id", code="previous_response_not_found")
        return list(found[1])
