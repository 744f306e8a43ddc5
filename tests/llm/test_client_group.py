"""AsyncLLM hands a generation's client group to the engine's scheduler (issue 10: fair scheduling)."""

from __future__ import annotations

import asyncio

from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.api import AsyncLLM
from llamarun.sampling.params import SamplingParams


def test_the_group_reaches_the_scheduler(tmp_path) -> None:
    spec = TinySpec()
    llm = AsyncLLM(str(add_byte_tokenizer(write_hf(spec, make_weights(spec)[0], tmp_path / "hf"))),
                   context_length=64, max_kv_tokens=256)
    seen: list[tuple[str, str | None]] = []
    add = llm.engine.scheduler.add
    llm.engine.scheduler.add = lambda req: seen.append((req.request_id, req.group)) or add(req)

    async def run(request_id: str, group: str | None) -> None:
        async for _ in llm.tokens([5, 6, 7], SamplingParams.greedy(max_tokens=2), request_id, group=group):
            pass

    async def main() -> None:
        await asyncio.gather(run("req-1-0", "req-1"), run("req-1-1", "req-1"), run("solo", None))

    try:
        asyncio.run(main())
    finally:
        llm.shutdown()
    assert sorted(seen) == [("req-1-0", "req-1"), ("req-1-1", "req-1"), ("solo", None)]
