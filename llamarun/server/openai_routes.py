"""OpenAI's endpoints, thin over the chat service: POST /v1/chat/completions, /v1/completions, GET /v1/models.

Streaming sends server-sent events `data: {chunk}` and ends with `data: [DONE]`; with
`stream_options.include_usage` every chunk carries `"usage": null` and one last chunk with no choices
carries the usage. `n` choices run as n generations of one request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamarun import __version__
from llamarun.engine.energy import energy_fields
from llamarun.llm.chat_service import Reply
from llamarun.llm.text_stream import Completion, StreamChunk, TokenLogprob
from llamarun.safety.report import CONTENT_FILTER, guard_field
from llamarun.server.errors import ApiError
from llamarun.server.openai_schemas import (
    ChatCompletionBody,
    CompletionBody,
    chat_completion_request,
    completion_request,
)
from llamarun.server.request_body import parse_request
from llamarun.server.store_info import list_entries
from llamarun.server.streaming import SSE_DONE, SSE_HEADERS, CleanupStreamingResponse, collect_unless_gone, sse
from llamarun.tools.wire import openai_tool_calls

router = APIRouter()
GUARD_FIELD = "llamarun_guard"  # our own top-level key (OpenAI clients keep unknown keys) for guard verdicts
FINGERPRINT = f"llamarun-{__version__}"


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    body, req = await parse_request(request, ChatCompletionBody, chat_completion_request)
    reply = await request.app.state.service.start(req, f"chatcmpl-{uuid.uuid4().hex[:24]}")
    return await _respond(request, body, reply, _ChatFormat(body, reply))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    body, req = await parse_request(request, CompletionBody, completion_request)
    reply = await request.app.state.service.start(req, f"cmpl-{uuid.uuid4().hex[:24]}")
    return await _respond(request, body, reply, _CompletionFormat(body, reply))


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await asyncio.to_thread(_models, request)}


@router.get("/v1/models/{model:path}")
async def get_model(request: Request, model: str) -> dict[str, Any]:
    for m in await asyncio.to_thread(_models, request):
        if m["id"] == model:
            return m
    raise ApiError(404, f"the model '{model}' does not exist", param="model", code="model_not_found")


def _models(request: Request) -> list[dict[str, Any]]:
    out = {e.name: {"id": e.name, "object": "model", "created": int(e.modified_at), "owned_by": "llamarun"}
           for e in list_entries(request.app.state.store)}
    for slot in request.app.state.manager.loaded():  # local paths served but not in the store
        out.setdefault(slot.name, {"id": slot.name, "object": "model", "created": int(slot.loaded_at),
                                   "owned_by": "llamarun"})
    return list(out.values())


async def _respond(request: Request, body: Any, reply: Reply, fmt: _Format) -> Response:
    if not body.stream:
        results = await collect_unless_gone(request, reply)
        return Response(status_code=499) if results is None else JSONResponse(fmt.whole(results))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events() -> AsyncIterator[bytes]:
        try:
            for obj in fmt.opening():
                yield sse(fmt.chunk_envelope(obj, include_usage))
            async for i, chunk in reply.chunks():
                for obj in fmt.pieces(i, chunk):
                    envelope = fmt.chunk_envelope(obj, include_usage)
                    if obj.get("finish_reason"):  # what the guards flagged in this choice, on its last chunk
                        envelope |= guard_field(reply, i, GUARD_FIELD)
                    yield sse(envelope)
            if include_usage:
                yield sse(fmt.envelope([], usage=fmt.usage()))
        except Exception as err:
            yield sse({"error": {"message": str(err), "type": "server_error", "param": None, "code": None}})
        yield SSE_DONE

    events_iter = events()

    async def cleanup() -> None:
        await events_iter.aclose()
        await reply.close()

    return CleanupStreamingResponse(events_iter, cleanup=cleanup, media_type="text/event-stream",
                                    headers=SSE_HEADERS)


def _finish_reason(reason: str | None, called: bool = False) -> str:
    if reason == CONTENT_FILTER:  # a guard refused the request or cut the reply
        return reason
    return "tool_calls" if called else "length" if reason == "length" else "stop"


class _Format:
    """The envelope chat and completion objects share."""

    object_whole = object_chunk = ""

    def __init__(self, body: Any, reply: Reply) -> None:
        self.body, self.reply = body, reply
        self.created = int(time.time())

    def envelope(self, choices: list[dict[str, Any]], *, chunk: bool = True, **extra: Any) -> dict[str, Any]:
        return {"id": self.reply.request_id, "object": self.object_chunk if chunk else self.object_whole,
                "created": self.created, "model": self.body.model, "system_fingerprint": FINGERPRINT,
                "choices": choices, **extra}

    def chunk_envelope(self, choice: dict[str, Any], include_usage: bool) -> dict[str, Any]:
        return self.envelope([choice], **({"usage": None} if include_usage else {}))

    def usage(self) -> dict[str, Any]:
        u = self.reply.usage()
        return {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
                "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
                "prompt_tokens_details": {"cached_tokens": u["cached_tokens"]},
                **energy_fields(u.get("energy_joules"))}  # llamarun's own, on GPUs; clients ignore unknown keys

    def opening(self) -> list[dict[str, Any]]:
        return []


class _ChatFormat(_Format):
    object_whole, object_chunk = "chat.completion", "chat.completion.chunk"

    def _logprobs(self, items: list[TokenLogprob]) -> dict[str, Any] | None:
        if not self.body.logprobs:
            return None
        return {"content": [{"token": lp.text, "logprob": lp.logprob, "bytes": self._bytes(lp.token_id),
                             "top_logprobs": [{"token": text, "logprob": value, "bytes": self._bytes(t)}
                                              for t, text, value in lp.top]}
                            for lp in items]}

    def _bytes(self, token_id: int) -> list[int] | None:
        try:
            return list(self.reply.model.tokenizer.token_bytes(token_id))
        except Exception:  # a token the tokenizer cannot spell: OpenAI allows null
            return None

    def opening(self) -> list[dict[str, Any]]:
        return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None} for i in range(self.body.n)]

    def pieces(self, i: int, chunk: StreamChunk) -> list[dict[str, Any]]:
        out = []
        if chunk.text or chunk.logprobs:
            out.append({"index": i, "delta": {"content": chunk.text}, "logprobs": self._logprobs(chunk.logprobs),
                        "finish_reason": None})
        if chunk.tool_calls:
            out.append({"index": i, "delta": {"tool_calls": openai_tool_calls(chunk.tool_calls, with_index=True)},
                        "logprobs": None, "finish_reason": None})
        if chunk.finished:
            reason = _finish_reason(chunk.finish_reason, bool(chunk.tool_calls))
            out.append({"index": i, "delta": {}, "logprobs": None, "finish_reason": reason})
        return out

    def whole(self, results: list[Completion]) -> dict[str, Any]:
        choices = [{"index": i, "message": _message(r), "logprobs": self._logprobs(r.logprobs),
                    "finish_reason": _finish_reason(r.finish_reason, bool(r.tool_calls))}
                   for i, r in enumerate(results)]
        return self.envelope(choices, chunk=False, usage=self.usage(), **guard_field(self.reply, None, GUARD_FIELD))


def _message(result: Completion) -> dict[str, Any]:
    if not result.tool_calls:
        return {"role": "assistant", "content": result.text}
    # As OpenAI: a turn that only calls tools has content null.
    return {"role": "assistant", "content": result.text or None, "tool_calls": openai_tool_calls(result.tool_calls)}


class _CompletionFormat(_Format):
    object_whole = object_chunk = "text_completion"

    def __init__(self, body: Any, reply: Reply) -> None:
        super().__init__(body, reply)
        tokenizer = reply.model.tokenizer
        texts = [p if isinstance(p, str) else tokenizer.decode(ids, skip_special=True)
                 for p, ids in zip(reply.request.prompts or [], reply.prompts, strict=True)]
        self.echoes = [t if body.echo else "" for t in texts for _ in range(body.n)]
        self.offsets = [len(e) for e in self.echoes]  # text_offset counts from the start of the choice

    def _logprobs(self, items: list[TokenLogprob], offset: int) -> dict[str, Any] | None:
        if self.body.logprobs is None:
            return None
        offsets = []
        for lp in items:
            offsets.append(offset)
            offset += len(lp.text)
        return {"tokens": [lp.text for lp in items], "token_logprobs": [lp.logprob for lp in items],
                "top_logprobs": [{text: value for _tid, text, value in lp.top} for lp in items],
                "text_offset": offsets}

    def opening(self) -> list[dict[str, Any]]:
        return [{"index": i, "text": e, "logprobs": None, "finish_reason": None}
                for i, e in enumerate(self.echoes) if e]

    def pieces(self, i: int, chunk: StreamChunk) -> list[dict[str, Any]]:
        if not (chunk.text or chunk.logprobs or chunk.finished):
            return []
        lp = self._logprobs(chunk.logprobs, self.offsets[i])
        self.offsets[i] += sum(len(t.text) for t in chunk.logprobs)
        return [{"index": i, "text": chunk.text, "logprobs": lp,
                 "finish_reason": _finish_reason(chunk.finish_reason) if chunk.finished else None}]

    def whole(self, results: list[Completion]) -> dict[str, Any]:
        choices = [{"index": i, "text": self.echoes[i] + r.text,
                    "logprobs": self._logprobs(r.logprobs, len(self.echoes[i])),
                    "finish_reason": _finish_reason(r.finish_reason)} for i, r in enumerate(results)]
        return self.envelope(choices, chunk=False, usage=self.usage(), **guard_field(self.reply, None, GUARD_FIELD))
