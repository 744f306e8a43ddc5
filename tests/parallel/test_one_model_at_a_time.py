"""A parallel server holds one model at a time (its ranks serve one): idle models make way, busy ones give a 503."""

from __future__ import annotations

import asyncio

import pytest
from server.fake_llm import FakeLoader

from llamarun.server.memory_budget import OverBudgetError
from llamarun.server.model_manager import ModelManager

pytestmark = pytest.mark.timeout(30)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_an_idle_model_is_unloaded_before_another_loads() -> None:
    loader = FakeLoader()

    async def scenario() -> None:
        m = ModelManager(loader, resolve=lambda name: name, one_at_a_time=True)
        m.release(await m.acquire("a"))
        lease = await m.acquire("b")
        assert [x.name for x in loader.live()] == ["b"] and loader.last("a").shut_down
        m.release(lease)
        await m.close()

    run(scenario())


def test_a_model_in_use_or_pinned_is_a_503_for_another() -> None:
    loader = FakeLoader()

    async def scenario() -> None:
        m = ModelManager(loader, resolve=lambda name: name, one_at_a_time=True)
        lease = await m.acquire("a")
        with pytest.raises(OverBudgetError, match="one model at a time; 'a' is in use"):
            await m.acquire("b")
        m.release(lease)
        await m.unload("a")
        await m.preload("c")  # the served model: pinned, never unloaded for a client's model
        with pytest.raises(OverBudgetError, match="'c' is in use"):
            await m.acquire("b")
        assert [x.name for x in loader.live()] == ["c"]
        await m.close()

    run(scenario())


def test_without_the_setting_models_load_side_by_side() -> None:
    loader = FakeLoader()

    async def scenario() -> None:
        m = ModelManager(loader, resolve=lambda name: name)
        for lease in [await m.acquire("a"), await m.acquire("b")]:
            m.release(lease)
        assert sorted(x.name for x in loader.live()) == ["a", "b"]
        await m.close()

    run(scenario())
