"""Ollama's generation endpoints: POST /api/generate and POST /api/chat.

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

from llamarun.server.errors import ApiError, parse_body
from llamarun.server.model_manager import Lease
from llamarun.server.ollama_schemas import (
    ChatRequest,
    GenerateRequest,
    chat_messages,
    check_supported,
    parse_keep_alive,
    sampling_params,
)
from llamarun.server.prompting import (
    chat_prompt_ids,
    check_prompt,
    check_token_ids,
    fit_max_tokens,
    text_prompt_ids,
)
from llamarun.server.store_info import rfc3339
from llamarun.server.streaming import CleanupStreamingResponse, Generation, ndjson, unless_disconnected

router = APIRouter()
NDJSON = "application/x-ndjson"


def _ns(seconds: float | None) -> int:
    return int((seconds or 0.0) * 1e9)


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    """Complete a prompt (through the chat template unless `raw`)."""
    t0 = time.perf_counter()
    req = await parse_body(request, GenerateRequest)
    check_supported(req, images=bool(req.images))
    if req.suffix:
        raise ApiError(400, "suffix (fill-in-the-middle) is not supported", param="suffix")
    if req.template:
        raise ApiError(400, "custom templates are not supported: the model's own chat template is used",
                       param="template")
    keep = parse_keep_alive(req.keep_alive)
    params, num_ctx = sampling_params(req.options, req.logprobs, req.top_logprobs)
    if not req.prompt and not req.context:
        return await _load_or_unload(request, req.model, keep, num_ctx, {"response": ""})
    manager = request.app.state.manager
    lease = await manager.acquire(req.model, num_ctx=num_ctx, keep_alive=keep)
    try:
        llm = lease.llm
        if req.raw:
            ids = await text_prompt_ids(llm, req.prompt or "")
        else:
            system = [{"role": "system", "content": req.system}] if req.system else []
            ids = await chat_prompt_ids(llm, [*system, {"role": "user", "content": req.prompt or ""}],
                                        param="prompt")
        if req.context:
            check_token_ids(llm, req.context, "context")
            bos = llm.tokenizer.bos_id
            ids = list(req.context) + (ids[1:] if ids and ids[0] == bos else ids)  # one bos, at the start
        check_prompt(llm, ids, "prompt")
        params = fit_max_tokens(llm, ids, params, strict=False, param="options.num_predict")
        gen = await Generation.start(llm, ids, params)
    except BaseException:
        manager.release(lease)
        raise
    return await _respond(request, req.model, req.stream, lease, gen, params, t0,
                          lambda text: {"response": text}, lambda out: {"context": ids + out})


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    """Answer the next assistant turn of a conversation."""
    t0 = time.perf_counter()
    req = await parse_body(request, ChatRequest)
    check_supported(req)
    keep = parse_keep_alive(req.keep_alive)
    params, num_ctx = sampling_params(req.options, req.logprobs, req.top_logprobs)
    if not req.messages:
        return await _load_or_unload(request, req.model, keep, num_ctx,
                                     {"message": {"role": "assistant", "content": ""}})
    messages = chat_messages(req.messages)
    manager = request.app.state.manager
    lease = await manager.acquire(req.model, num_ctx=num_ctx, keep_alive=keep)
    try:
        llm = lease.llm
        ids = await chat_prompt_ids(llm, messages, req.tools or None)
        check_prompt(llm, ids, "messages")
        params = fit_max_tokens(llm, ids, params, strict=False, param="options.num_predict")
        gen = await Generation.start(llm, ids, params)
    except BaseException:
        manager.release(lease)
        raise
    return await _respond(request, req.model, req.stream, lease, gen, params, t0,
                          lambda text: {"message": {"role": "assistant", "content": text}}, lambda out: {})


async def _load_or_unload(request: Request, model: str, keep: float | None, num_ctx: int | None,
                          empty: dict[str, Any]) -> JSONResponse:
    manager = request.app.state.manager
    if keep == 0:
        await manager.unload(model)
        reason = "unload"
    else:
        manager.release(await manager.acquire(model, num_ctx=num_ctx, keep_alive=keep))
        reason = "load"
    return JSONResponse({"model": model, "created_at": rfc3339(time.time()), **empty,
                         "done": True, "done_reason": reason})


def _logprobs(items: list[Any]) -> list[dict[str, Any]]:
    return [{"token": lp.text, "logprob": lp.logprob,
             "top_logprobs": [{"token": text, "logprob": value} for _id, text, value in lp.top]}
            for lp in items]


def _final(stats: Any, lease: Lease, t0: float, reason: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"done": True, "done_reason": reason or "stop",
                           "total_duration": _ns(time.perf_counter() - t0),
                           "load_duration": _ns(lease.load_seconds)}
    if stats is not None:
        out |= {"prompt_eval_count": stats.prompt_tokens - stats.cached_tokens,
                "prompt_eval_duration": _ns(stats.prompt_seconds), "eval_count": stats.generated_tokens,
                "eval_duration": _ns(stats.decode_seconds)}
    return out


async def _respond(request: Request, model: str, stream: bool, lease: Lease, gen: Generation, params: Any,
                   t0: float, piece: Callable[[str], dict[str, Any]],
                   extra: Callable[[list[int]], dict[str, Any]]) -> Response:
    manager, metrics = request.app.state.manager, request.app.state.metrics
    want_logprobs = params.logprobs is not None

    async def finish() -> None:
        await gen.close()
        manager.release(lease)
        metrics.generation_finished(lease.model.name, "ollama", gen.finish_reason, gen.stats)

    if not stream:
        try:
            gone, result = await unless_disconnected(request, gen.collect())
        finally:
            await finish()
        if gone:
            return Response(status_code=499)
        body = {"model": model, "created_at": rfc3339(time.time()), **piece(result.text)}
        if want_logprobs:
            body["logprobs"] = _logprobs(result.logprobs)
        body |= _final(result.stats, lease, t0, result.finish_reason) | extra(result.token_ids)
        return JSONResponse(body)

    async def lines() -> AsyncIterator[bytes]:
        out_ids: list[int] = []
        try:
            async for chunk in gen.chunks():
                out_ids.extend(chunk.token_ids)
                if not (chunk.text or chunk.logprobs or chunk.finished):
                    continue  # half a UTF-8 character: wait for the rest
                obj = {"model": model, "created_at": rfc3339(time.time()), **piece(chunk.text)}
                if want_logprobs:
                    obj["logprobs"] = _logprobs(chunk.logprobs)
                if chunk.finished:
                    obj |= _final(chunk.stats, lease, t0, chunk.finish_reason) | extra(out_ids)
                else:
                    obj["done"] = False
                yield ndjson(obj)
        except Exception as err:
            yield ndjson({"error": str(err)})

    body_iter = lines()

    async def cleanup() -> None:
        await body_iter.aclose()
        await finish()

    return CleanupStreamingResponse(body_iter, cleanup=cleanup, media_type=NDJSON)
