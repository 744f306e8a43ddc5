"""HTTP streaming plumbing: cancel on disconnect, cleanup that always runs, NDJSON and SSE framing.

The generations themselves (errors before the first chunk, n at once, closing) live in llm/generation.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DISCONNECT_POLL_SECONDS = 0.25


async def collect_unless_gone(request: Request, reply: Any) -> list[Any] | None:
    """A non-streaming reply's results, the reply closed either way; None when the client went away (answer 499)."""
    try:
        gone, results = await unless_disconnected(request, reply.collect())
    finally:
        await reply.close()
    return None if gone else results


async def unless_disconnected(request: Request, work: Awaitable[Any]) -> tuple[bool, Any]:
    """Run `work` (a non-streaming generation) but cancel it if the client goes; (gone, result)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return False, task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                return True, None
    finally:
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await task


class CleanupStreamingResponse(StreamingResponse):
    """A streaming response that always runs `cleanup`, even when the client left before the first byte.

    Starlette cancels the body iterator when the client disconnects, and never starts it if the client
    left early, so the iterator's own `finally` is not enough to release the engine request and lease.
    """

    def __init__(self, content: AsyncIterator[bytes], *, cleanup: Callable[[], Awaitable[None]],
                 media_type: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup()


def ndjson(obj: Any) -> bytes:
    """One line of newline-delimited JSON (Ollama streaming)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def sse(obj: Any) -> bytes:
    """One server-sent event carrying JSON (OpenAI streaming)."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
