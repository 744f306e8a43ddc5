"""The model named on `llamarun serve` stays loaded: clients' keep_alive neither shortens nor ends it."""

from __future__ import annotations

import asyncio
import time

import ollama
import pytest
from conftest import DEFAULT, live_server, make_resolver, wait_until
from fake_llm import FakeLoader
from fastapi.testclient import TestClient
from test_serve_cmd import parse

from llamarun.cli import serve_cmd
from llamarun.server import ModelManager, create_app

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def names(m: ModelManager) -> list[str]:
    return sorted(slot.name for slot in m.loaded())


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_the_served_model_outlives_a_short_keep_alive_that_expires_another() -> None:
    loader, clock = FakeLoader(), Clock()

    async def scenario() -> None:
        m = ModelManager(loader, resolve=lambda n: n, clock=clock, keep_alive=1)
        await m.preload("served")
        m.release(await m.acquire("served", keep_alive=1))  # a client asks for 1 s
        m.release(await m.acquire("other", keep_alive=1))
        m.release(await m.acquire("served"))  # the server default (1 s) applies to others only
        clock.now += 10
        assert await m.expire() == ["other"]
        assert names(m) == ["served"] and m.expires_at(m.get("served")) is None
        assert await m.unload("served")  # a client's keep_alive 0: the served model stays
        clock.now += 10_000
        assert await m.expire() == [] and names(m) == ["served"]
        assert await m.unload("served", force=True)  # `llamarun rm` of its files: it goes
        assert names(m) == [] and loader.last("served").shut_down

    run(scenario())


def test_serve_keep_alive_sets_the_served_models_time_and_clients_cannot_shorten_it() -> None:
    loader, clock = FakeLoader(), Clock()

    async def scenario() -> None:
        m = ModelManager(loader, resolve=lambda n: n, clock=clock, keep_alive=60)
        await m.preload("served", keep_alive=60)  # `serve served --keep-alive 1m`
        m.release(await m.acquire("served", keep_alive=0.5))
        clock.now += 30
        assert await m.expire() == []
        clock.now += 31
        assert await m.expire() == ["served"]

    run(scenario())


def test_making_room_never_evicts_the_served_model() -> None:
    loader = FakeLoader(memory_bytes=600)

    async def scenario() -> None:
        m = ModelManager(loader, resolve=lambda n: n, memory_budget=1300)
        await m.preload("served")
        m.release(await m.acquire("b"))
        m.release(await m.acquire("c"))  # b goes to make room; the served model stays
        assert names(m) == ["c", "served"]

    run(scenario())


def test_a_client_cannot_unload_the_served_model_over_http(store) -> None:
    manager = ModelManager(FakeLoader(), resolve=make_resolver(store), keep_alive=0.2)
    app = create_app(manager, store=store, preload=DEFAULT, reap_interval=0.02)
    with live_server(app) as url:
        client = ollama.Client(host=url, timeout=30)
        client.chat(model=DEFAULT, messages=[{"role": "user", "content": "hi"}], keep_alive=0.1)
        client.chat(model="fake-other", messages=[{"role": "user", "content": "hi"}], keep_alive=0.1)
        assert wait_until(lambda: names(manager) == [DEFAULT])  # the other model expired
        client.generate(model=DEFAULT, keep_alive=0)  # Ollama's "unload now"
        time.sleep(0.3)  # several reaper rounds
        assert names(manager) == [DEFAULT]
        assert [m.model for m in client.ps().models] == [DEFAULT]


def test_serve_pins_its_model_unless_keep_alive_is_given(store, monkeypatch) -> None:
    monkeypatch.setenv("LLAMARUN_HOME", str(store.root))
    for argv, lasts in (([], True), (["--keep-alive", "10m"], False)):
        args = parse(DEFAULT, *argv)
        app = serve_cmd.build_app(args, serve_cmd.check_args(args), loader=FakeLoader())
        with TestClient(app, base_url="http://localhost") as client:
            body = {"model": DEFAULT, "prompt": "x", "stream": False, "keep_alive": "1s"}
            assert client.post("/api/generate", json=body).status_code == 200
            expires = client.get("/api/ps").json()["models"][0]["expires_at"]
        assert (expires > "2100") == lasts, expires  # 10m: an hour from now at most, not years
