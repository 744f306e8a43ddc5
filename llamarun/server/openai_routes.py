"""OpenAI's endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models.

Streaming sends server-sent events `data: {chunk}` and ends with `data: [DONE]`; with
`stream_options.include_usage` every chunk carries `"usage": null` and one last chunk with no
choices carries the usage. `n` choices run as n concurrent requests on the engine (seeded requests
use seed, seed+1, ... so the choices differ yet repeat).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamarun import __version__
from llamarun.sampling.params import SamplingParams
from llamarun.server.errors import ApiError, parse_body
from llamarun.server.openai_format import (
    chat_logprobs,
    completion_logprobs,
    finish_reason,
    usage,
)
from llamarun.server.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_messages,
    chat_params,
    completion_params,
    prompt_list,
)
from llamarun.server.prompting import (
    chat_prompt_ids,
    check_prompt,
    check_token_ids,
    fit_max_tokens,
    text_prompt_ids,
)
from llamarun.server.store_info import list_entries
from llamarun.server.streaming import (
    SSE_DONE,
    SSE_HEADERS,
    CleanupStreamingResponse,
    collect_all,
    merged,
    sse,
    start_all,
    unless_disconnected,
)

router = APIRouter()
FINGERPRINT = f"llamarun-{__version__}"


def _seeded(params: SamplingParams, i: int) -> SamplingParams:
    return params if params.seed is None or i == 0 else params.replace(seed=(params.seed + i) % 2**64)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    req = await parse_body(request, ChatCompletionRequest)
    params = chat_params(req)
    messages = chat_messages(req.messages)
    tools = req.tools if req.tools and req.tool_choice != "none" else None

    async def prepare(llm: Any) -> tuple[list[list[int]], list[SamplingParams]]:
        ids = await chat_prompt_ids(llm, messages, tools)
        check_prompt(llm, ids, "messages")
        p = fit_max_tokens(llm, ids, params, strict=True, param="max_tokens")
        return [ids] * req.n, [_seeded(p, i) for i in range(req.n)]

    return await _run(request, req, "chatcmpl", prepare, _ChatFormat(req))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    req = await parse_body(request, CompletionRequest)
    params = completion_params(req)
    prompts = prompt_list(req.prompt)
    echoes: list[str] = []

    async def prepare(llm: Any) -> tuple[list[list[int]], list[SamplingParams]]:
        all_ids, all_params = [], []
        for prompt in prompts:
            if isinstance(prompt, str):
                ids = await text_prompt_ids(llm, prompt)
            else:
                check_token_ids(llm, prompt, "prompt")
                ids = list(prompt)
            check_prompt(llm, ids, "prompt")
            p = fit_max_tokens(llm, ids, params, strict=True, param="max_tokens")
            text = prompt if isinstance(prompt, str) else llm.tokenizer.decode(ids, skip_special=True)
            for i in range(req.n):
                all_ids.append(ids)
                all_params.append(_seeded(p, i))
                echoes.append(text if req.echo else "")
        return all_ids, all_params

    return await _run(request, req, "cmpl", prepare, _CompletionFormat(req, echoes))


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
    for lm in request.app.state.manager.loaded():  # local paths served but not in the store
        out.setdefault(lm.name, {"id": lm.name, "object": "model", "created": int(lm.loaded_at),
                                 "owned_by": "llamarun"})
    return list(out.values())


async def _run(request: Request, req: Any, prefix: str, prepare: Callable[[Any], Any], fmt: Any) -> Response:
    manager, metrics = request.app.state.manager, request.app.state.metrics
    lease = await manager.acquire(req.model)
    try:
        prompts, params = await prepare(lease.llm)
        rid = f"{prefix}-{uuid.uuid4().hex[:24]}"
        gens = await start_all(lease.llm, prompts, params, rid)
    except BaseException:
        manager.release(lease)
        raise
    fmt.start(rid, int(time.time()), lease.llm, prompts)

    async def finish() -> None:
        for g in gens:
            await g.close()
        manager.release(lease)
        for g in gens:
            metrics.generation_finished(lease.model.name, "openai", g.finish_reason, g.stats)

    if not req.stream:
        try:
            gone, results = await unless_disconnected(request, collect_all(gens))
        finally:
            await finish()
        return Response(status_code=499) if gone else JSONResponse(fmt.whole(results))

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def events() -> AsyncIterator[bytes]:
        try:
            for obj in fmt.opening():
                yield sse(fmt.chunk_envelope(obj, include_usage))
            async for i, chunk in merged(gens):
                for obj in fmt.pieces(i, chunk):
                    yield sse(fmt.chunk_envelope(obj, include_usage))
            if include_usage:
                yield sse(fmt.envelope([], usage=usage(fmt.prompts, gens, req.n)))
        except Exception as err:
            yield sse({"error": {"message": str(err), "type": "server_error", "param": None, "code": None}})
        yield SSE_DONE

    body = events()

    async def cleanup() -> None:
        await body.aclose()
        await finish()

    return CleanupStreamingResponse(body, cleanup=cleanup, media_type="text/event-stream",
                                    headers=SSE_HEADERS)


class _Format:
    """Shared envelope of chat and completion objects."""

    object_whole = object_chunk = ""

    def __init__(self, req: Any) -> None:
        self.req = req
        self.id, self.created, self.llm, self.prompts = "", 0, None, []

    def start(self, rid: str, created: int, llm: Any, prompts: list[list[int]]) -> None:
        self.id, self.created, self.llm, self.prompts = rid, created, llm, prompts

    def envelope(self, choices: list[dict[str, Any]], *, chunk: bool = True, **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": self.object_chunk if chunk else self.object_whole,
                "created": self.created, "model": self.req.model, "system_fingerprint": FINGERPRINT,
                "choices": choices, **extra}

    def chunk_envelope(self, choice: dict[str, Any], include_usage: bool) -> dict[str, Any]:
        return self.envelope([choice], **({"usage": None} if include_usage else {}))

    def opening(self) -> list[dict[str, Any]]:
        return []


class _ChatFormat(_Format):
    object_whole, object_chunk = "chat.completion", "chat.completion.chunk"

    def opening(self) -> list[dict[str, Any]]:
        return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None} for i in range(self.req.n)]

    def pieces(self, i: int, chunk: Any) -> list[dict[str, Any]]:
        out = []
        if chunk.text or chunk.logprobs:
            lp = {"content": chat_logprobs(self.llm, chunk.logprobs)} if self.req.logprobs else None
            out.append({"index": i, "delta": {"content": chunk.text}, "logprobs": lp, "finish_reason": None})
        if chunk.finished:
            out.append({"index": i, "delta": {}, "logprobs": None, "finish_reason": finish_reason(chunk)})
        return out

    def whole(self, results: list[Any]) -> dict[str, Any]:
        def logprobs(r: Any) -> dict[str, Any] | None:
            return {"content": chat_logprobs(self.llm, r.logprobs)} if self.req.logprobs else None

        choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": logprobs(r),
                    "finish_reason": finish_reason(r)} for i, r in enumerate(results)]
        return self.envelope(choices, chunk=False, usage=usage(self.prompts, results, self.req.n))


class _CompletionFormat(_Format):
    object_whole = object_chunk = "text_completion"

    def __init__(self, req: Any, echoes: list[str]) -> None:
        super().__init__(req)
        self.echoes = echoes  # filled in while the prompts are prepared
        self.offsets: list[int] = []

    def start(self, rid: str, created: int, llm: Any, prompts: list[list[int]]) -> None:
        super().start(rid, created, llm, prompts)
        self.offsets = [len(e) for e in self.echoes]  # text_offset counts from the start of the choice

    def opening(self) -> list[dict[str, Any]]:
        return [{"index": i, "text": e, "logprobs": None, "finish_reason": None}
                for i, e in enumerate(self.echoes) if e]

    def pieces(self, i: int, chunk: Any) -> list[dict[str, Any]]:
        if not (chunk.text or chunk.logprobs or chunk.finished):
            return []
        lp = None
        if self.req.logprobs is not None:
            lp = completion_logprobs(chunk.logprobs, self.offsets[i])
            self.offsets[i] += sum(len(t.text) for t in chunk.logprobs)
        return [{"index": i, "text": chunk.text, "logprobs": lp,
                 "finish_reason": finish_reason(chunk) if chunk.finished else None}]

    def whole(self, results: list[Any]) -> dict[str, Any]:
        choices = [{"index": i, "text": self.echoes[i] + r.text,
                    "logprobs": completion_logprobs(r.logprobs, len(self.echoes[i]))
                    if self.req.logprobs is not None else None,
                    "finish_reason": finish_reason(r)} for i, r in enumerate(results)]
        return self.envelope(choices, chunk=False, usage=usage(self.prompts, results, self.req.n))
