"""Shared fixtures: the real default model (fetched once into a cache shared by test runs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 GGUF, the bundled default model."""
    override = os.environ.get("LLAMARUN_TEST_GGUF")
    if override:
        return Path(override)
    from llamarun.store.default_model import ensure_default_model

    return ensure_default_model()
