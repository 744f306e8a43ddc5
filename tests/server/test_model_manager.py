"""ModelManager: lazy loads shared by concurrent requests, keep_alive, memory budget, reloads, failures."""

from __future__ import annotations

import asyncio

import pytest
from fake_llm import FakeLoader

from llamarun.errors import DoesNotFitError, LlamarunError, ModelNotFoundError
from llamarun.server.model_manager import ModelManager

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolve(name: str) -> str:
    if name.startswith("missing"):
        raise ModelNotFoundError(f"model '{name}' not found")
    return name.removesuffix(":latest")


def manager(loader: FakeLoader, **kwargs) -> ModelManager:
    return ModelManager(loader, resolve=resolve, **kwargs)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_concurrent_first_requests_share_one_load() -> None:
    loader = FakeLoader()
    loader.load_delay = 0.2

    async def scenario() -> None:
        m = manager(loader)
        leases = await asyncio.gather(*(m.acquire("a") for _ in range(5)), m.acquire("a:latest"))
        assert len(loader.instances) == 1
        assert {id(lease.served) for lease in leases} == {id(loader.instances[0])}
        assert m.get("a").active == 6 and all(lease.load_seconds > 0.1 for lease in leases)
        for lease in leases:
            m.release(lease)
            m.release(lease)  # twice is harmless
        assert m.get("a").active == 0
        again = await m.acquire("a")
        assert again.load_seconds == 0.0 and len(loader.instances) == 1
        await m.close()
        assert loader.instances[0].shut_down

    run(scenario())


def test_keep_alive_expiry() -> None:
    loader, clock = FakeLoader(), Clock()

    async def scenario() -> None:
        m = manager(loader, clock=clock, keep_alive=300)
        m.release(await m.acquire("a", keep_alive=10))
        m.release(await m.acquire("b"))  # the server default
        m.release(await m.acquire("c", keep_alive=-1))  # forever
        busy = await m.acquire("d", keep_alive=1)
        clock.now += 9.9
        assert await m.expire() == []
        clock.now += 0.2
        assert await m.expire() == ["a"]
        clock.now += 10_000
        assert sorted(await m.expire()) == ["b"]  # c is kept forever, d is in use
        assert sorted(lm.name for lm in m.loaded()) == ["c", "d"]
        m.release(busy)
        assert m.expires_at(m.get("d")) == clock.now + 1
        clock.now += 1
        assert await m.expire() == ["d"]
        assert m.expires_at(m.get("c")) is None
        assert [llm.name for llm in loader.instances if llm.shut_down] == ["a", "b", "d"]

    run(scenario())


def test_keep_alive_zero_unloads_when_the_last_lease_ends() -> None:
    loader = FakeLoader()

    async def scenario() -> None:
        m = manager(loader)
        first, second = await m.acquire("a", keep_alive=0), await m.acquire("a", keep_alive=0)
        m.release(first)
        await asyncio.sleep(0.01)
        assert m.get("a") is not None  # still in use by the second
        m.release(second)
        for _ in range(100):
            if m.get("a") is None:
                break
            await asyncio.sleep(0.01)
        assert m.get("a") is None and loader.instances[0].shut_down

    run(scenario())


def test_budget_unloads_least_recently_used_idle_models() -> None:
    loader, clock = FakeLoader(memory_bytes=100), Clock()
    sizes = {"a": 100, "b": 100, "c": 100, "huge": 10}  # what the files suggest before a first load

    async def scenario() -> None:
        m = manager(loader, memory_budget=250, clock=clock, estimate=sizes.__getitem__)
        for name in ("a", "b"):
            m.release(await m.acquire(name))
            clock.now += 1
        m.release(await m.acquire("a"))  # a is now the most recently used
        clock.now += 1
        m.release(await m.acquire("c"))  # 300 > 250: b, least recently used, goes
        assert sorted(lm.name for lm in m.loaded()) == ["a", "c"]
        held = await m.acquire("a")
        clock.now += 1
        await m.unload("c")
        m.release(await m.acquire("b"))  # a is in use and stays; nothing else needs to go
        assert sorted(lm.name for lm in m.loaded()) == ["a", "b"]
        m.release(held)
        # A model bigger than its estimate: after loading, idle models make room for what it really takes.
        loader.per_model["huge"] = {"memory_bytes": 200}
        m.release(await m.acquire("huge"))
        assert [lm.name for lm in m.loaded()] == ["huge"]
        assert [llm.name for llm in loader.live()] == ["huge"]

    run(scenario())


def test_does_not_fit_unloads_idle_models_and_retries() -> None:
    loader = FakeLoader()
    loader.too_big = {"big"}

    async def scenario() -> None:
        m = manager(loader)
        m.release(await m.acquire("small"))
        lease = await m.acquire("big")
        assert [lm.name for lm in m.loaded()] == ["big"] and loader.last("small").shut_down
        m.release(lease)
        busy = await m.acquire("small")
        await m.unload("big")
        with pytest.raises(DoesNotFitError):
            await m.acquire("big")  # the only other model is in use: the error reaches the request
        assert [lm.name for lm in m.loaded()] == ["small"]
        m.release(busy)

    run(scenario())


def test_num_ctx_reloads_an_idle_model_but_not_a_busy_one() -> None:
    loader = FakeLoader()

    async def scenario() -> None:
        m = manager(loader, context_length=512)
        m.release(await m.acquire("a"))
        assert loader.last().context_length == 512
        lease = await m.acquire("a", num_ctx=1024)
        assert len(loader.instances) == 2 and lease.served.context_length == 1024
        assert loader.instances[0].shut_down
        other = await m.acquire("a", num_ctx=2048)  # busy: served by the loaded one
        assert other.served is lease.served
        m.release(lease)
        m.release(other)
        same = await m.acquire("a", num_ctx=1024)
        assert same.served is lease.served and len(loader.instances) == 2

    run(scenario())


def test_failed_loads_and_unknown_models() -> None:
    class Broken(FakeLoader):
        fail = True

        def __call__(self, name, context_length):
            if self.fail:
                raise LlamarunError(f"{name} is corrupt")
            return super().__call__(name, context_length)

    loader = Broken()

    async def scenario() -> None:
        m = manager(loader)
        results = await asyncio.gather(m.acquire("a"), m.acquire("a"), return_exceptions=True)
        assert all(isinstance(r, LlamarunError) and "corrupt" in str(r) for r in results)
        assert m.loaded() == []
        loader.fail = False
        m.release(await m.acquire("a"))  # the next request tries again
        with pytest.raises(ModelNotFoundError):
            await m.acquire("missing-model")
        assert await m.unload("never-loaded") is False

    run(scenario())


def test_unload_while_busy_happens_at_release() -> None:
    loader = FakeLoader()

    async def scenario() -> None:
        m = manager(loader)
        lease = await m.acquire("a", keep_alive=-1)
        assert await m.unload("a") is True
        assert m.get("a") is not None and not loader.last().shut_down
        m.release(lease)
        for _ in range(100):
            if m.get("a") is None:
                break
            await asyncio.sleep(0.01)
        assert m.get("a") is None and loader.last().shut_down

    run(scenario())
