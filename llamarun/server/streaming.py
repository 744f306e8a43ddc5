"""Running generations for HTTP: errors before the status line, cleanup on disconnect, n streams at once.

`Generation.start` waits for the first chunk, because the engine raises request errors (a prompt
longer than the context, ...) before it: they become a 4xx instead of a broken 200 stream. Every
engine stream is closed on every path (finished, failed, client gone), which aborts the request in
the engine and frees its KV blocks; closing is shielded from the cancellation that a disconnect
brings, so it always completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DISCONNECT_POLL_SECONDS = 0.25


@dataclass
class Result:
    """A whole generation, collected."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    stats: Any = None


class Generation:
    """One engine stream whose first chunk has arrived."""

    def __init__(self, stream: AsyncIterator[Any], first: Any) -> None:
        self._stream = stream
        self._first: Any = first
        self.finish_reason: str | None = None
        self.stats: Any = None
        self.closed = False

    @classmethod
    async def start(cls, llm: Any, prompt_ids: list[int], params: Any, request_id: str | None = None
                    ) -> Generation:
        """Submit the request and wait for its first chunk (errors surface here)."""
        stream = llm.stream(prompt_ids, params, request_id=request_id)
        try:
            first = await anext(stream)
        except BaseException:
            await _aclose(stream)
            raise
        return cls(stream, first)

    async def chunks(self) -> AsyncIterator[Any]:
        """Every chunk, the first included; the stream is closed when this ends for any reason."""
        try:
            chunk, self._first = self._first, None
            while chunk is not None:
                if chunk.finished:
                    self.finish_reason, self.stats = chunk.finish_reason, chunk.stats
                yield chunk
                if chunk.finished:
                    return
                chunk = await anext(self._stream, None)
        finally:
            await self.close()

    async def collect(self) -> Result:
        """Drain the stream into one Result."""
        result = Result()
        parts: list[str] = []
        async for chunk in self.chunks():
            parts.append(chunk.text)
            result.token_ids.extend(chunk.token_ids)
            result.logprobs.extend(chunk.logprobs)
        result.text = "".join(parts)
        result.finish_reason, result.stats = self.finish_reason, self.stats
        return result

    async def close(self) -> None:
        """Close the engine stream (aborting the request if it still runs); safe to call twice."""
        if not self.closed:
            self.closed = True
            await _aclose(self._stream)


async def _aclose(stream: Any) -> None:
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(Exception):
            await stream.aclose()


async def start_all(llm: Any, prompts: Sequence[list[int]], params: Sequence[Any], request_id: str
                    ) -> list[Generation]:
    """Start one generation per (prompt, params) concurrently; if any fails, close the others and raise."""
    tasks = [asyncio.ensure_future(Generation.start(llm, ids, p, f"{request_id}-{i}"))
             for i, (ids, p) in enumerate(zip(prompts, params, strict=True))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        with anyio.CancelScope(shield=True):
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, Generation):
                    await r.close()
        raise
    return [t.result() for t in tasks]


async def collect_all(gens: Sequence[Generation]) -> list[Result]:
    """Collect every generation concurrently; if one fails or this is cancelled, stop all of them."""
    tasks = [asyncio.ensure_future(g.collect()) for g in gens]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def merged(gens: Sequence[Generation]) -> AsyncIterator[tuple[int, Any]]:
    """(index, chunk) from all generations as they come; every stream is closed when this ends."""
    if len(gens) == 1:  # the common case needs no tasks
        try:
            async for chunk in gens[0].chunks():
                yield 0, chunk
        finally:
            await gens[0].close()
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    done = object()

    async def pump(i: int, g: Generation) -> None:
        try:
            async for chunk in g.chunks():
                await queue.put((i, chunk, None))
            await queue.put((i, done, None))
        except Exception as err:
            await queue.put((i, done, err))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            i, item, err = await queue.get()
            if err is not None:
                raise err
            if item is done:
                remaining -= 1
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
            for g in gens:
                await g.close()


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
