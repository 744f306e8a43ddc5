"""Fixtures for the server tests: a model store with the default model, fake models, apps and live servers."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))  # fake_llm, next to this file, for every test module here
from fake_llm import FakeLoader

from llamarun.server import ModelManager, create_app
from llamarun.server.store_info import resolve as resolve_name
from llamarun.store.home import ModelStore

DEFAULT = "smollm2:135m"


@pytest.fixture(scope="session")
def store(default_home: Path) -> ModelStore:
    """A store holding the real default model (hard-linked, so it costs one sha256): the session's `default_home`."""
    return ModelStore(default_home)


def make_resolver(store: ModelStore) -> Callable[[str], str]:
    """Real name resolution against `store`; names starting with `fake-` are extra fake models."""

    def resolve(name: str) -> str:
        if name.startswith("fake-"):
            return name
        return resolve_name(name, store).name

    return resolve


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def make_app(store: ModelStore, loader: FakeLoader) -> Callable[..., Any]:
    """Build an app over fake models: make_app(api_key=..., memory_budget=..., keep_alive=..., ...)."""

    def build(*, api_key: str | None = None, reap_interval: float = 0.05, pull: Any = None,
              **manager_kwargs: Any) -> Any:
        manager = ModelManager(loader, resolve=make_resolver(store), **manager_kwargs)
        return create_app(manager, api_key=api_key, store=store, pull=pull, reap_interval=reap_interval)

    return build


@pytest.fixture
def client(make_app: Callable[..., Any]) -> Iterator[TestClient]:
    with TestClient(make_app()) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_server(app: Any, timeout: float = 60.0) -> AbstractContextManager[str]:
    """Run `app` under uvicorn on a free loopback port in a thread; yield its base URL."""
    from llamarun.bench.serving import serve_in_thread

    return serve_in_thread(app, startup_timeout=timeout)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
