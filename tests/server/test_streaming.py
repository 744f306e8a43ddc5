"""The streaming plumbing on its own: errors before the first chunk, closing aborts, n-way merge, stages, cleanup."""

from __future__ import annotations

import asyncio

import pytest
from fake_llm import DEFAULT_REPLY, FakeAsyncLLM
from starlette.requests import ClientDisconnect

from llamarun.errors import LlamarunError
from llamarun.llm.generation import Generation, collect_all, merged, start_all
from llamarun.llm.text_stream import StreamChunk
from llamarun.sampling.params import SamplingParams
from llamarun.server.streaming import CleanupStreamingResponse, unless_disconnected

pytestmark = pytest.mark.timeout(30)
PROMPT = [256, 104, 105]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_errors_come_from_start_and_leave_nothing_running() -> None:
    llm = FakeAsyncLLM("m", context_length=2)

    async def scenario() -> None:
        with pytest.raises(LlamarunError, match="context holds 2"):
            await Generation.start(llm, PROMPT, SamplingParams())
        assert llm.running == 0

    run(scenario())


def test_close_aborts_a_generation_paused_between_chunks() -> None:
    llm = FakeAsyncLLM("m")

    async def scenario() -> None:
        gen = await Generation.start(llm, PROMPT, SamplingParams(), "r1")
        chunks = gen.chunks()
        assert (await anext(chunks)).text == DEFAULT_REPLY[0]
        assert llm.running == 1  # paused at a yield, not cancelled: only an explicit close stops it
        await gen.close()
        await gen.close()
        assert llm.running == 0 and llm.calls[-1].aborted and llm.calls[-1].request_id == "r1"
        await chunks.aclose()

    run(scenario())


def test_collect_gathers_everything() -> None:
    llm = FakeAsyncLLM("m")

    async def scenario() -> None:
        gen = await Generation.start(llm, PROMPT, SamplingParams(max_tokens=6, logprobs=1))
        result = await gen.collect()
        assert result.text == DEFAULT_REPLY[:6] and len(result.token_ids) == len(result.logprobs) == 6
        assert result.finish_reason == "length" and result.stats.generated_tokens == 6
        assert not llm.calls[-1].aborted

    run(scenario())


def test_start_all_and_merge() -> None:
    llm = FakeAsyncLLM("m", token_delay=0.001)

    async def scenario() -> None:
        params = [SamplingParams(seed=s) for s in (1, 2, 3)]
        gens = await start_all(llm, [PROMPT] * 3, params, "req")
        texts = ["", "", ""]
        async for i, chunk in merged(gens):
            texts[i] += chunk.text
        assert texts == [f"{DEFAULT_REPLY} [seed {s}]" for s in (1, 2, 3)]
        assert [c.request_id for c in llm.calls] == ["req-0", "req-1", "req-2"]
        # A consumer that stops early: every stream is aborted.
        gens = await start_all(llm, [PROMPT] * 3, params, "early")
        stream = merged(gens)
        await anext(stream)
        await stream.aclose()
        assert llm.running == 0 and all(c.aborted for c in llm.calls[3:])

    run(scenario())


def test_start_all_closes_the_others_when_one_fails() -> None:
    llm = FakeAsyncLLM("m", context_length=10)

    async def scenario() -> None:
        with pytest.raises(LlamarunError):
            await start_all(llm, [PROMPT, list(range(20))], [SamplingParams()] * 2, "r")
        assert llm.running == 0

    run(scenario())


def test_cleanup_runs_when_the_client_left_before_the_first_byte() -> None:
    cleaned = []

    async def body():
        yield b"never sent"

    async def cleanup() -> None:
        cleaned.append(True)

    async def scenario() -> None:
        response = CleanupStreamingResponse(body(), cleanup=cleanup, media_type="text/plain")

        async def receive():
            return {"type": "http.disconnect"}

        async def send(message):
            raise OSError("connection reset")

        scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
        with pytest.raises(ClientDisconnect):  # what Starlette makes of the OSError
            await response(scope, receive, send)
        assert cleaned == [True]

    run(scenario())


def test_unless_disconnected_cancels_work_when_the_client_goes() -> None:
    class Request:
        def __init__(self) -> None:
            self.polls = 0

        async def is_disconnected(self) -> bool:
            self.polls += 1
            return self.polls >= 2

    llm = FakeAsyncLLM("m", token_delay=0.05, reply="x" * 200)

    async def scenario() -> None:
        gen = await Generation.start(llm, PROMPT, SamplingParams())
        gone, result = await unless_disconnected(Request(), gen.collect())
        assert gone and result is None
        assert llm.running == 0 and llm.calls[-1].aborted
        quick = await Generation.start(llm, PROMPT, SamplingParams(max_tokens=2))
        gone, result = await unless_disconnected(Request(), quick.collect())
        assert not gone and result.text == "xx"

    run(scenario())


def test_collect_all_stops_every_choice_when_one_fails() -> None:
    llm = FakeAsyncLLM("m", token_delay=0.01, reply="y" * 100)

    async def scenario() -> None:
        gens = await start_all(llm, [PROMPT] * 3, [SamplingParams()] * 3, "r")
        llm.fail_after_tokens = 5  # every stream breaks at its sixth token; the first failure stops the rest
        with pytest.raises(RuntimeError, match="broke mid-stream"):
            await collect_all(gens)
        assert llm.running == 0 and all(c.finish_reason is None for c in llm.calls)
        llm.fail_after_tokens = None
        gens = await start_all(llm, [PROMPT] * 2, [SamplingParams(max_tokens=3)] * 2, "ok")
        assert [r.text for r in await collect_all(gens)] == ["yyy", "yyy"]

    run(scenario())


class _Shout:
    """A stage that rewrites text (upper case) and cuts the stream at the first 'A' it passes on."""

    def feed(self, chunk: StreamChunk) -> StreamChunk:
        chunk.text = chunk.text.upper()
        if "A" in chunk.text and not chunk.finished:
            chunk.text = chunk.text[:chunk.text.index("A") + 1]
            chunk.finished, chunk.finish_reason = True, "stop"
        return chunk


def test_a_stage_rewrites_and_cuts_and_the_request_is_cancelled() -> None:
    llm = FakeAsyncLLM("m", reply="hello again, and more")

    async def scenario() -> None:
        gen = await Generation.start(llm, PROMPT, SamplingParams(), "staged", [_Shout()])
        result = await gen.collect()
        assert result.text == "HELLO A" and result.finish_reason == "stop"
        assert llm.running == 0 and llm.calls[-1].aborted  # the engine request did not run on

    run(scenario())
