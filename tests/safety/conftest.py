"""Fixtures for the safety tests: apps over fake models (tests/server/fake_llm.py) with fake guards."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_guards
sys.path.insert(0, str(Path(__file__).parent.parent / "server"))  # fake_llm, prometheus_text
from fake_guards import UNSAFE, MarkerGuard
from fake_llm import FakeLoader

from llamarun.safety.pipeline import GuardPipeline
from llamarun.server import ModelManager, create_app
from llamarun.store.home import ModelStore


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def marker() -> MarkerGuard:
    return MarkerGuard(dict(UNSAFE), name="llama_guard")


@pytest.fixture
def make_app(tmp_path: Path, loader: FakeLoader) -> Callable[..., Any]:
    """make_app(guards=pipeline(...)): an app over fake models (any name) and an empty store."""

    def build(guards: GuardPipeline | None = None, **kwargs: Any) -> Any:
        manager = ModelManager(loader, resolve=lambda name: name)
        return create_app(manager, store=ModelStore(tmp_path / "home"), reap_interval=0.05, guards=guards,
                          **kwargs)

    return build
