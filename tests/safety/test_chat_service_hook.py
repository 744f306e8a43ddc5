"""The chat service's guard hook without HTTP (the path `llamarun run` and `LLM` take)."""

from __future__ import annotations

import asyncio

from fake_guards import UNSAFE, MarkerGuard, pipeline
from fake_llm import FakeAsyncLLM

from llamarun.chat.messages import Message
from llamarun.llm.chat_service import ChatRequest, ChatService
from llamarun.llm.sync import SingleModel
from llamarun.safety.screening import RequestGuard


def serve(reply: str, mode: str = "block", n: int = 1, content: str = "hello"):
    model = FakeAsyncLLM("fake", reply=reply)
    guard = MarkerGuard(dict(UNSAFE), name="llama_guard")
    service = ChatService(SingleModel(model), guard=RequestGuard(pipeline((guard, mode), stream_every=4,
                                                                          hold_back=2)))

    async def go():
        reply_ = await service.start(ChatRequest("fake", messages=[Message("user", content)], n=n))
        try:
            return reply_, await reply_.collect()
        finally:
            await reply_.close()

    reply_, results = asyncio.run(go())
    return model, guard, reply_, results


def test_blocked_input_makes_no_engine_request() -> None:
    model, _guard, reply, results = serve("never sent", content="a bomb", n=3)
    assert model.calls == [] and len(results) == 3
    assert all(r.finish_reason == "content_filter" and r.text.startswith("Sorry") for r in results)
    assert reply.guard.to_json()["categories"] == ["S9"] and reply.usage()["completion_tokens"] == 0


def test_each_generation_is_judged_on_its_own() -> None:
    model, guard, reply, results = serve("a calm answer", n=2)
    assert [r.finish_reason for r in results] == ["stop", "stop"] and reply.guard.to_json() is None
    assert len(model.calls) == 2 and guard.texts("output")[-2:] == ["a calm answer", "a calm answer"]


def test_without_a_guard_nothing_changes() -> None:
    model = FakeAsyncLLM("fake", reply="a bomb")

    async def go():
        r = await ChatService(SingleModel(model)).start(ChatRequest("fake", messages=[Message("user", "bomb")]))
        try:
            return r, await r.collect()
        finally:
            await r.close()

    reply, results = asyncio.run(go())
    assert results[0].text == "a bomb" and reply.guard is None
