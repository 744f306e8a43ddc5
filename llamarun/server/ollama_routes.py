"""Ollama's generation endpoints: POST /api/generate and POST /api/chat, thin over the chat service.

Streaming (the default) sends NDJSON objects `{"model", "created_at", "response" | "message",
"done": false}`; the last has `done: true`, `done_reason` and the timings in nanoseconds. A request
with no prompt (or no messages) only loads the model, or unloads it with `keep_alive: 0`, as in Ollama.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamarun.chat.messages import ToolCall
from llamarun.engine.energy import energy_fields
from llamarun.engine.stats import RequestStats
from llamarun.llm.chat_service import ChatRequest, Reply
from llamarun.llm.text_stream import TokenLogprob
from llamarun.safety.report import guard_field
from llamarun.server.ollama_schemas import ChatBody, GenerateBody, chat_request, generate_request
from llamarun.server.request_body import parse_request
from llamarun.server.store_info import rfc3339
from llamarun.server.streaming import CleanupStreamingResponse, collect_unless_gone, ndjson
from llamarun.tools.wire import ollama_tool_calls

router = APIRouter()
NDJSON = "application/x-ndjson"
Piece = Callable[[str, list[ToolCall]], dict[str, Any]]


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    """Complete a prompt (through the chat template unless `raw`)."""
    body, req = await parse_request(request, GenerateBody, generate_request)
    if not body.prompt and not body.context:
        return await _load_or_unload(request, req, {"response": ""})
    reply = await request.app.state.service.start(req)
    prompt = reply.prompts[0]
    return await _respond(request, body.stream, reply, lambda text, _calls: {"response": text},
                          lambda out: {"context": prompt + out})


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    """Answer the next assistant turn of a conversation."""
    body, req = await parse_request(request, ChatBody, chat_request)
    if not req.messages:
        return await _load_or_unload(request, req, {"message": {"role": "assistant", "content": ""}})
    reply = await request.app.state.service.start(req)
    return await _respond(request, body.stream, reply, _chat_message, lambda out: {})


def _chat_message(text: str, calls: list[ToolCall]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = ollama_tool_calls(calls)
    return {"message": message}


async def _load_or_unload(request: Request, req: ChatRequest, empty: dict[str, Any]) -> JSONResponse:
    manager = request.app.state.manager
    if req.keep_alive == 0:
        await manager.unload(req.model)
        reason = "unload"
    else:
        manager.release(await manager.acquire(req.model, num_ctx=req.num_ctx, keep_alive=req.keep_alive))
        reason = "load"
    return JSONResponse({"model": req.model, "created_at": rfc3339(time.time()), **empty,
                         "done": True, "done_reason": reason})


def _logprobs(items: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [{"token": lp.text, "logprob": lp.logprob,
             "top_logprobs": [{"token": text, "logprob": value} for _id, text, value in lp.top]}
            for lp in items]


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _final(reply: Reply, stats: RequestStats | None, reason: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"done": True, "done_reason": reason or "stop", "total_duration": _ns(reply.elapsed()),
                           "load_duration": _ns(reply.lease.load_seconds)}
    if stats is not None:
        # As current Ollama: the count is the whole prompt (clients bill it as input tokens) and the
        # cached part is told apart; the duration stays the prefill's, which ran only the uncached part.
        out |= {"prompt_eval_count": stats.prompt_tokens, "prompt_eval_cached_count": stats.cached_tokens,
                "prompt_eval_duration": _ns(stats.prompt_seconds),
                "eval_count": stats.generated_tokens, "eval_duration": _ns(stats.decode_seconds)}
        out |= energy_fields(stats.energy_joules)  # llamarun's own fields, on GPUs: Ollama clients ignore them
    return out


async def _respond(request: Request, stream: bool, reply: Reply, piece: Piece,
                   extra: Callable[[list[int]], dict[str, Any]]) -> Response:
    model = reply.request.model
    want_logprobs = reply.request.params.logprobs is not None
    if not stream:
        results = await collect_unless_gone(request, reply)
        if results is None:
            return Response(status_code=499)
        result = results[0]
        body = {"model": model, "created_at": rfc3339(time.time()), **piece(result.text, result.tool_calls)}
        if want_logprobs:
            body["logprobs"] = _logprobs(result.logprobs)
        return JSONResponse(body | _final(reply, result.stats, result.finish_reason) | extra(result.token_ids)
                            | guard_field(reply))

    async def lines() -> AsyncIterator[bytes]:
        out_ids: list[int] = []
        try:
            async for _, chunk in reply.chunks():
                out_ids.extend(chunk.token_ids)
                if not (chunk.text or chunk.logprobs or chunk.finished):
                    continue  # half a UTF-8 character: wait for the rest
                text = chunk.text
                if chunk.tool_calls:  # as Ollama: the calls in a message of their own, before the last
                    yield ndjson({"model": model, "created_at": rfc3339(time.time()),
                                  **piece(text, chunk.tool_calls), "done": False})
                    text = ""
                obj = {"model": model, "created_at": rfc3339(time.time()), **piece(text, [])}
                if want_logprobs:
                    obj["logprobs"] = _logprobs(chunk.logprobs)
                if chunk.finished:
                    obj |= _final(reply, chunk.stats, chunk.finish_reason) | extra(out_ids) | guard_field(reply)
                else:
                    obj["done"] = False
                yield ndjson(obj)
        except Exception as err:
            yield ndjson({"error": str(err)})

    body_iter = lines()

    async def cleanup() -> None:
        await body_iter.aclose()
        await reply.close()

    return CleanupStreamingResponse(body_iter, cleanup=cleanup, media_type=NDJSON)
