"""A request's num_ctx never reloads or unloads a model other clients share (issue 10, item 1)."""

from __future__ import annotations

import pytest
from conftest import DEFAULT, make_resolver
from fake_llm import FakeLoader
from fastapi.testclient import TestClient

from llamarun.server import ModelManager, create_app

pytestmark = pytest.mark.timeout(60)
HI = [{"role": "user", "content": "hi"}]


def served_app(store, loader: FakeLoader):
    """An app whose `serve` model is DEFAULT, loaded with 512 tokens of context."""
    manager = ModelManager(loader, resolve=make_resolver(store), context_length=512)
    return create_app(manager, store=store, preload=DEFAULT)


def chat(client: TestClient, **extra) -> object:
    return client.post("/api/chat", json={"model": DEFAULT, "messages": HI, "stream": False, **extra})


def test_num_ctx_does_not_reload_the_served_model(store) -> None:
    loader = FakeLoader()
    with TestClient(served_app(store, loader)) as client:
        served = loader.last(DEFAULT)
        r = chat(client, options={"num_ctx": 16})  # would not even hold the chat template
        assert r.status_code == 200, r.text  # served by the loaded model, whose context holds the prompt
        r = client.post("/api/generate", json={"model": DEFAULT, "prompt": "hi", "stream": False,
                                               "options": {"num_ctx": 1}})
        assert r.status_code == 400 and "num_ctx=1 is below 16" in r.json()["error"]
        r = client.post("/api/generate", json={"model": DEFAULT, "prompt": "", "options": {"num_ctx": 4}})
        assert r.status_code == 400  # a load-only request is checked the same way
        r = chat(client, options={"num_ctx": 4096}, messages=[{"role": "user", "content": "x" * 600}])
        assert r.status_code == 400
        assert "context holds 512" in r.json()["error"] and "num_ctx=4096 was not applied" in r.json()["error"]
        r = chat(client, keep_alive=0)  # nor does a client's keep_alive unload it
        assert r.status_code == 200
        r = client.post("/api/generate", json={"model": DEFAULT, "keep_alive": 0})
        assert r.status_code == 200
        # The well-behaved client: the same model, never reloaded, its usual context.
        r = chat(client)
        assert r.status_code == 200 and r.json()["message"]["content"]
        assert loader.live(DEFAULT) == [served] and served.context_length == 512 and not served.shut_down
        assert len(loader.instances) == 1


def test_num_ctx_does_not_reload_a_busy_model(store) -> None:
    loader = FakeLoader()
    manager = ModelManager(loader, resolve=make_resolver(store), context_length=512)
    with TestClient(create_app(manager, store=store)) as client:
        lease = client.portal.call(manager.acquire, DEFAULT)  # another client's request holds the model
        r = chat(client, options={"num_ctx": 16})
        assert r.status_code == 200, r.text  # its prompt fits the loaded 512-token context
        r = chat(client, options={"num_ctx": 8192}, messages=[{"role": "user", "content": "x" * 600}])
        assert r.status_code == 400 and "loaded with a 512-token context" in r.json()["error"]
        assert len(loader.instances) == 1 and lease.served.context_length == 512
        manager.release(lease)
        assert chat(client).status_code == 200  # the well-behaved client
        assert len(loader.instances) == 1 and not lease.served.shut_down


def test_an_idle_model_reloads_for_num_ctx_and_back_for_the_next_client(store) -> None:
    loader = FakeLoader()
    manager = ModelManager(loader, resolve=make_resolver(store), context_length=512)
    with TestClient(create_app(manager, store=store)) as client:
        assert chat(client).status_code == 200
        r = chat(client, options={"num_ctx": 16})  # nobody else uses it: reloaded (Ollama's behaviour)
        assert r.status_code == 400 and "context holds 16" in r.json()["error"]
        assert loader.last().context_length == 16
        r = chat(client)  # the next client does not inherit the 16-token context
        assert r.status_code == 200, r.text
        assert loader.last().context_length == 512
