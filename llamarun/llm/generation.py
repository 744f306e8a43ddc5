"""Running generations: errors before the first chunk, a stage between engine text and client, n at once.

`Generation.start` waits for the first chunk, because the engine raises request errors (a prompt longer
than the context, ...) before it: a server turns them into a 4xx instead of a broken 200 stream. Every
stream is closed on every path (finished, failed, client gone), which cancels the engine request and
frees its KV blocks; closing is shielded from the cancellation a disconnect brings, so it completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

import anyio

from llamarun.llm.served import ServedModel
from llamarun.llm.text_stream import Completion, StreamChunk, text_chunks
from llamarun.sampling.params import SamplingParams


class StreamStage(Protocol):
    """A step between the engine's text and the client: hold text back, rewrite it, or end the stream.

    `feed` gets every chunk in order and returns the chunk to pass on (or an awaitable of it: output
    guards wait for their verdicts); returning a chunk with `finished` set ends the generation there (the
    engine request is cancelled). Tool-call parsing and output guards plug in here.
    """

    def feed(self, chunk: StreamChunk) -> StreamChunk | Awaitable[StreamChunk]: ...


StageFactory = Callable[[SamplingParams], StreamStage]


class Generation:
    """One running request whose first chunk has arrived."""

    def __init__(self, stream: AsyncIterator[StreamChunk], first: StreamChunk,
                 stages: Sequence[StreamStage] = ()) -> None:
        self._stream = stream
        self._first: StreamChunk | None = first
        self._stages = stages
        self.result = Completion()  # filled in as chunks pass
        self.closed = False

    @classmethod
    async def start(cls, model: ServedModel, prompt_ids: list[int], params: SamplingParams,
                    request_id: str | None = None, stages: Sequence[StreamStage] = (), *,
                    group: str | None = None) -> Generation:
        """Submit the request and wait for its first chunk (errors surface here); `group`: its client request."""
        request_id = request_id or f"gen-{uuid.uuid4().hex[:24]}"
        stream = text_chunks(model.tokens(prompt_ids, params, request_id, group=group), model.tokenizer, params)
        try:
            first = await anext(stream)
        except BaseException:
            await _aclose(stream)
            raise
        return cls(stream, first, stages)

    async def chunks(self) -> AsyncIterator[StreamChunk]:
        """Every chunk, the first included; the stream is closed when this ends for any reason."""
        try:
            chunk, self._first = self._first, None
            while chunk is not None:
                for stage in self._stages:
                    chunk = stage.feed(chunk)
                    if inspect.isawaitable(chunk):
                        chunk = await chunk
                self.result.add(chunk)
                yield chunk
                if chunk.finished:
                    return
                chunk = await anext(self._stream, None)
        finally:
            await self.close()

    async def collect(self) -> Completion:
        """Drain the stream into one Completion."""
        async for _ in self.chunks():
            pass
        return self.result

    async def close(self) -> None:
        """Close the stream (cancelling the request if it still runs); safe to call twice."""
        if not self.closed:
            self.closed = True
            await _aclose(self._stream)


async def _aclose(stream: AsyncIterator[StreamChunk]) -> None:
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await stream.aclose()  # type: ignore[attr-defined]


async def start_all(model: ServedModel, prompts: Sequence[list[int]], params: Sequence[SamplingParams],
                    request_id: str, stages: Sequence[StageFactory] = ()) -> list[Generation]:
    """Start one generation per (prompt, params) concurrently; if any fails, close the others and raise.

    They form one client group (`request_id`), so the engine admits them fairly against other requests'.
    """
    tasks = [asyncio.ensure_future(Generation.start(model, ids, p, f"{request_id}-{i}", [s(p) for s in stages],
                                                    group=request_id))
             for i, (ids, p) in enumerate(zip(prompts, params, strict=True))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        with anyio.CancelScope(shield=True):
            for r in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(r, Generation):
                    await r.close()
        raise
    return [t.result() for t in tasks]


async def collect_all(gens: Sequence[Generation]) -> list[Completion]:
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


async def merged(gens: Sequence[Generation]) -> AsyncIterator[tuple[int, StreamChunk]]:
    """(index, chunk) from all generations as they come; every stream is closed when this ends."""
    if len(gens) == 1:  # the common case needs no tasks
        try:
            async for chunk in gens[0].chunks():
                yield 0, chunk
        finally:
            await gens[0].close()
        return
    queue: asyncio.Queue[tuple[int, StreamChunk | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, g: Generation) -> None:
        try:
            async for chunk in g.chunks():
                await queue.put((i, chunk, None))
            await queue.put((i, None, None))
        except Exception as err:
            await queue.put((i, None, err))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            i, item, err = await queue.get()
            if err is not None:
                raise err
            if item is None:
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
