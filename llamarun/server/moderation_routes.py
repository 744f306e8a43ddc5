"""The moderation endpoints over the server's guards: POST /v1/moderations (OpenAI) and POST /api/moderate (ours).

`/v1/moderations` takes `input` (a string, a list of strings, or text parts) and judges each as a user's
input. `/api/moderate` takes `input` (string or list) or `messages`, whose last message is judged in the
context of the others (a user turn as input, an assistant turn as output, a tool turn as a tool result),
and `kind` to judge `input` as something else. Both report every guard that is not off; modes only show
as the `action` the chat endpoints would take. Without guards both answer 503 saying how to start some.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from llamarun.safety.moderation import ollama_result, openai_result
from llamarun.safety.pipeline import GuardPipeline, Judgement
from llamarun.safety.verdict import Message, Subject
from llamarun.server.errors import ApiError
from llamarun.server.request_body import parse_body

router = APIRouter()
MAX_INPUTS = 64  # texts per moderation request; each is one check of every guard
_ROLE_KINDS = {"user": "input", "system": "input", "assistant": "output", "tool": "tool_result"}
NO_GUARDS = ("no safety guard is configured on this server; start it with --guard llama-guard3:1b, "
             "--prompt-guard, --code-shield or --language-policy warn")

Kind = Literal["input", "output", "tool_result", "tool_call"]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OpenAIModerationBody(_Lenient):
    input: str | list[str] | list[dict[str, Any]]
    model: str | None = None


class ModerateMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""


class ModerateBody(_Lenient):
    input: str | list[str] | None = None
    messages: list[ModerateMessage] | None = Field(default=None, min_length=1)
    kind: Kind | None = None


def _guards(request: Request) -> GuardPipeline:
    guards = getattr(request.app.state, "guards", None)
    if not guards:
        raise ApiError(503, NO_GUARDS, code="no_guard_configured")
    return guards


def _texts(value: str | list[Any], param: str = "input") -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, dict):  # OpenAI's multi-modal form: text parts only
            if item.get("type") != "text" or not isinstance(item.get("text"), str):
                raise ApiError(400, f"input part of type '{item.get('type')}' is not supported: the guards judge "
                                    "text", param=f"{param}.{i}")
            item = item["text"]
        texts.append(item)
    if not texts:
        raise ApiError(400, "the input is empty", param=param)
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"{len(texts)} inputs in one request; send at most {MAX_INPUTS}", param=param)
    return texts


async def _judge(guards: GuardPipeline, subjects: list[Subject]) -> list[Judgement]:
    return list(await asyncio.gather(*(guards.check([s]) for s in subjects)))


@router.post("/v1/moderations")
async def openai_moderations(request: Request) -> dict[str, Any]:
    guards = _guards(request)
    body = await parse_body(request, OpenAIModerationBody)
    judgements = await _judge(guards, [Subject("input", t) for t in _texts(body.input)])
    model = body.model or "+".join(s["guard"] for s in guards.describe())
    return {"id": f"modr-{uuid.uuid4().hex[:24]}", "model": model,
            "results": [openai_result(j) for j in judgements]}


@router.post("/api/moderate")
async def moderate(request: Request) -> dict[str, Any]:
    guards = _guards(request)
    body = await parse_body(request, ModerateBody)
    if (body.input is None) == (body.messages is None):
        raise ApiError(400, "give either input (text or a list of texts) or messages", param="input")
    if body.messages is not None:
        turns = [Message(m.role, m.content) for m in body.messages]
        kind = body.kind or _ROLE_KINDS[turns[-1].role]
        subjects = [Subject(kind, turns[-1].content, tuple(turns[:-1]))]
    else:
        subjects = [Subject(body.kind or "input", t) for t in _texts(body.input or [])]
    judgements = await _judge(guards, subjects)
    return {"flagged": any(j.flagged for j in judgements), "guards": guards.describe(),
            "results": [ollama_result(j) for j in judgements]}
