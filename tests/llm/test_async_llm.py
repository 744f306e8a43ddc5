"""AsyncLLM: many concurrent streams on the batched engine equal one-at-a-time runs; aborts free blocks."""

from __future__ import annotations

import asyncio
import time

import pytest
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.api import LLM, AsyncLLM
from llamarun.errors import LlamarunError
from llamarun.sampling.params import SamplingParams

PROMPTS = ["hello there", "the theme is", "in the", "a much longer prompt about the weather in the hills",
           "tiny", "the end", "one more", "last"]
GREEDY = SamplingParams.greedy(max_tokens=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    spec = TinySpec()
    weights, _ = make_weights(spec, seed=5)
    return str(add_byte_tokenizer(write_hf(spec, weights, tmp_path_factory.mktemp("a") / "hf")))


@pytest.fixture(scope="module")
def served(tiny):
    llm = AsyncLLM(tiny, context_length=128, max_kv_tokens=1024)
    yield llm
    llm.shutdown()


async def collect(llm, prompt, params=GREEDY):
    text, ids, last = "", [], None
    async for chunk in llm.stream(llm.prompt_ids(prompt), params):
        text += chunk.text
        ids += chunk.token_ids
        last = chunk
    return text, ids, last


def test_concurrent_streams_equal_sequential(tiny, served):
    sync = LLM(tiny, context_length=128)
    expected = [sync.stream_ids(sync.prompt_ids(p), GREEDY).result() for p in PROMPTS]

    async def main():
        return await asyncio.gather(*(collect(served, p) for p in PROMPTS))

    results = asyncio.run(main())
    for (text, ids, last), exp in zip(results, expected, strict=True):
        assert ids == exp.token_ids and text == exp.text
        assert last.finished and last.finish_reason == "length"
        assert last.stats.generated_tokens == 10 and last.stats.prompt_tokens > 0
    assert served.metrics().kv_blocks_used == 0
    assert served.metrics().requests_finished >= len(PROMPTS)


def test_closing_a_stream_aborts_and_frees_blocks(served):
    async def main():
        gen = served.stream(served.prompt_ids("hello there"), SamplingParams.greedy(max_tokens=100))
        async for _ in gen:
            break
        await gen.aclose()

    asyncio.run(main())
    deadline = time.time() + 10
    while served.metrics().kv_blocks_used and time.time() < deadline:
        time.sleep(0.01)
    assert served.metrics().kv_blocks_used == 0 and served.metrics().running == 0


def test_prompt_longer_than_context_raises_before_any_chunk(served):
    async def main():
        async for _ in served.stream(list(range(1, 200)), GREEDY):
            pytest.fail("no chunk expected")

    with pytest.raises(LlamarunError, match="context holds 128"):
        asyncio.run(main())


def test_stop_string_ends_the_stream_with_stats(served):
    async def main():
        free, _, _ = await collect(served, "hello there", SamplingParams.greedy(max_tokens=20))
        stop = free[3:5]
        cut, _, last = await collect(served, "hello there", SamplingParams.greedy(max_tokens=20, stop=(stop,)))
        return free, stop, cut, last

    free, stop, cut, last = asyncio.run(main())
    assert cut == free[: free.index(stop)]
    assert last.finished and last.finish_reason == "stop" and last.stats.done_reason == "stop"


def test_closing_a_sync_stream_aborts_its_request(tiny):
    llm = LLM(tiny, context_length=128)
    stream = llm.stream_ids(llm.prompt_ids("hello there"), SamplingParams.greedy(max_tokens=100))
    pieces = iter(stream)
    next(pieces)
    stream.close()
    assert not llm.engine.has_unfinished and llm.engine.pool.num_used == 0
    # The next request runs alone and completes normally.
    done = llm.stream_ids(llm.prompt_ids("the end"), GREEDY).result()
    assert len(done.token_ids) == 10
