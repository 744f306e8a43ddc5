"""POST /v1/responses (OpenAI's Responses API), thin over the chat service: one message of output text.

Without `stream` the answer is a `response` object whose `output` holds one assistant message with one
`output_text` part. With `stream`, server-sent events carry `event:` names and numbered `data:`
objects: response.created, response.in_progress, response.output_item.added,
response.content_part.added, response.output_text.delta per piece, response.output_text.done,
response.content_part.done, response.output_item.done, then response.completed (or
response.incomplete when max_output_tokens cut the text). A failure after the first event is an
`error` event followed by response.failed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamarun.chat.messages import Message
from llamarun.llm.chat_service import Reply
from llamarun.safety.report import CONTENT_FILTER, guard_field
from llamarun.server.request_body import parse_body
from llamarun.server.responses_schemas import ResponseMemory, ResponsesBody, responses_request
from llamarun.server.streaming import SSE_HEADERS, CleanupStreamingResponse, collect_unless_gone

router = APIRouter()


def _memory(request: Request) -> ResponseMemory:
    state = request.app.state
    if not hasattr(state, "responses"):
        state.responses = ResponseMemory()
    return state.responses


class _Shape:
    """The response object of one request, in each state it passes through."""

    def __init__(self, body: ResponsesBody) -> None:
        self.body = body
        self.id, self.message_id = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())

    def message(self, text: str, status: str) -> dict[str, Any]:
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant",
                "content": [] if status == "in_progress" else [_part(text)]}

    def response(self, status: str, output: list[dict[str, Any]], reply: Reply | None = None,
                 reason: str | None = None) -> dict[str, Any]:
        b = self.body
        out: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "error": None, "incomplete_details": None, "instructions": b.instructions,
            "max_output_tokens": b.max_output_tokens, "model": b.model, "output": output,
            "parallel_tool_calls": True, "previous_response_id": b.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "store": b.store,
            "temperature": 1.0 if b.temperature is None else b.temperature,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0 if b.top_p is None else b.top_p, "truncation": "disabled", "usage": None,
            "user": b.user, "metadata": b.metadata or {},
        }
        if reason == "length":
            out["status"] = "incomplete"
            out["incomplete_details"] = {"reason": "max_output_tokens"}
        if reason == CONTENT_FILTER:  # a safety guard refused the request or cut the reply
            out["status"] = "incomplete"
            out["incomplete_details"] = {"reason": "content_filter"}
        out |= guard_field(reply, 0, "llamarun_guard") if reply is not None else {}
        if reply is not None:
            u = reply.usage()
            out["usage"] = {"input_tokens": u["prompt_tokens"],
                            "input_tokens_details": {"cached_tokens": u["cached_tokens"]},
                            "output_tokens": u["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                            "total_tokens": u["prompt_tokens"] + u["completion_tokens"]}
        return out


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _event(seq: int, kind: str, fields: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, "sequence_number": seq, **fields}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    body = await parse_body(request, ResponsesBody)
    memory = _memory(request)
    earlier = memory.earlier(body.previous_response_id)
    req = responses_request(body, earlier)
    shape = _Shape(body)
    reply = await request.app.state.service.start(req, shape.id)
    turns = (req.messages or [])[1 if body.instructions else 0:]  # the next request brings its own instructions

    def remember(text: str) -> None:
        if body.store:
            memory.keep(shape.id, [*turns, Message("assistant", text)])

    if not body.stream:
        results = await collect_unless_gone(request, reply)
        if results is None:
            return Response(status_code=499)
        text, reason = results[0].text, results[0].finish_reason
        remember(text)
        done = "completed" if reason not in ("length", CONTENT_FILTER) else "incomplete"
        return JSONResponse(shape.response("completed", [shape.message(text, done)], reply, reason))

    async def events() -> AsyncIterator[bytes]:
        seq = 0

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            seq += 1
            return _event(seq - 1, kind, fields)

        where = {"item_id": shape.message_id, "output_index": 0, "content_index": 0}
        yield event("response.created", response=shape.response("in_progress", []))
        yield event("response.in_progress", response=shape.response("in_progress", []))
        yield event("response.output_item.added", output_index=0, item=shape.message("", "in_progress"))
        yield event("response.content_part.added", **where, part=_part(""))
        pieces: list[str] = []
        reason = None
        try:
            async for _, chunk in reply.chunks():
                if chunk.text:
                    pieces.append(chunk.text)
                    yield event("response.output_text.delta", **where, delta=chunk.text, logprobs=[])
                if chunk.finished:
                    reason = chunk.finish_reason
        except Exception as err:
            yield event("error", code="server_error", message=str(err), param=None)
            yield event("response.failed", response={**shape.response("failed", []),
                                                     "error": {"code": "server_error", "message": str(err)}})
            return
        text = "".join(pieces)
        done = "completed" if reason not in ("length", CONTENT_FILTER) else "incomplete"
        yield event("response.output_text.done", **where, text=text, logprobs=[])
        yield event("response.content_part.done", **where, part=_part(text))
        yield event("response.output_item.done", output_index=0, item=shape.message(text, done))
        await reply.close()  # the usage is final once every generation has closed
        remember(text)
        final = shape.response("completed", [shape.message(text, done)], reply, reason)
        yield event("response.completed" if final["status"] == "completed" else "response.incomplete",
                    response=final)

    body_iter = events()

    async def cleanup() -> None:
        await body_iter.aclose()
        await reply.close()

    return CleanupStreamingResponse(body_iter, cleanup=cleanup, media_type="text/event-stream", headers=SSE_HEADERS)
