"""The memory budget is enforced at load (issue 10, item 7): idle models make room, else a 503.

With a 1.5 GB budget and two 1.0 GB models, the second may not load while the first is in use (or
loading): it gets a 503 with Retry-After naming what it needs and what is free, and loads once the
first is idle. A model that cannot fit at all gets a 503 without Retry-After.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from conftest import DEFAULT, live_server
from fake_llm import FakeLoader

from llamarun.server.memory_budget import Holder, OverBudgetError, choose_victims
from llamarun.server.model_manager import ModelManager

pytestmark = pytest.mark.timeout(60)
GB = 10**9


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_choose_victims_takes_idle_models_least_recently_used_first() -> None:
    holders = [Holder("old", 4, idle=True, pinned=False), Holder("busy", 4, idle=False, pinned=False),
               Holder("new", 4, idle=True, pinned=False)]
    assert choose_victims("x", 2, 20, holders) == []
    assert choose_victims("x", 6, 14, holders) == ["old"]
    assert choose_victims("x", 10, 14, holders) == ["old", "new"]
    with pytest.raises(OverBudgetError) as err:
        choose_victims("x", 11, 14, holders)
    assert err.value.retry_after is not None and "busy" in str(err.value)  # room once busy is idle
    with pytest.raises(OverBudgetError) as err:
        choose_victims("x", 15, 14, holders)
    assert err.value.retry_after is None and "larger than the whole budget" in str(err.value)
    pinned = [Holder("served", 10, idle=False, pinned=True)]
    with pytest.raises(OverBudgetError) as err:
        choose_victims("x", 5, 14, pinned)
    assert err.value.retry_after is None and "served model" in str(err.value)


def test_a_second_model_waits_for_the_first_in_use_then_loads() -> None:
    loader = FakeLoader(memory_bytes=GB)

    async def scenario() -> None:
        m = ModelManager(loader, resolve=lambda n: n, memory_budget=int(1.5 * GB))
        lease = await m.acquire("a")
        with pytest.raises(OverBudgetError) as err:
            await m.acquire("b")
        assert err.value.retry_after and "needs 1.0 GB but only 0.5 GB" in str(err.value)
        assert [x.name for x in loader.live()] == ["a"]  # refused: b was loaded and unloaded, a stays
        m.release(lease)
        m.release(await m.acquire("b"))  # a is idle now: it makes room
        assert [x.name for x in loader.live()] == ["b"]

    run(scenario())


def test_concurrent_loads_reserve_their_memory() -> None:
    loader = FakeLoader(memory_bytes=GB)
    loader.load_delay = 0.3
    sizes = {"a": GB, "b": GB}

    async def scenario() -> None:
        m = ModelManager(loader, resolve=lambda n: n, memory_budget=int(1.5 * GB), estimate=sizes.__getitem__)
        results = await asyncio.gather(m.acquire("a"), m.acquire("b"), return_exceptions=True)
        leases = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(leases) == 1 and isinstance(errors[0], OverBudgetError), results
        assert len(loader.instances) == 1  # the refused one never started loading
        assert sum(x.memory_bytes for x in loader.live()) <= 1.5 * GB

    run(scenario())


def test_over_budget_is_a_503_with_retry_after_over_http(make_app, loader) -> None:
    loader.defaults.update(memory_bytes=GB, token_delay=0.01)
    loader.per_model[DEFAULT] = {"reply": "x" * 300}
    app = make_app(memory_budget=int(1.5 * GB))
    body = {"model": "fake-other", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/api/generate", json={"model": DEFAULT, "prompt": "x"}) as streaming:
            lines = streaming.iter_lines()
            next(lines)  # the default model is in use for the next 3 s
            r = client.post("/api/chat", json=body)
            assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text
            assert "needs 1.0 GB" in r.json()["error"] and "free" in r.json()["error"]
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_does_not_fit"
            list(lines)
        assert client.post("/api/chat", json=body).status_code == 200  # the default model is idle now
        loader.per_model["fake-huge"] = {"memory_bytes": 2 * GB}
        r = client.post("/api/chat", json={**body, "model": "fake-huge"})
        assert r.status_code == 503 and "retry-after" not in r.headers
        assert "--memory-budget" in r.json()["error"]
        assert client.post("/api/chat", json=body).status_code == 200  # nothing broke
