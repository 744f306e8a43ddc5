"""Llama Guard 3 as a guard: Meta's prompt (prompt.py, categories.py), the verdict parser (parse.py), the
"unsafe" score (score.py), the guard itself (guard.py) and how it gets its model (model_handle.py).

`build_llama_guard` is what the safety pipeline's factory calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from llamarun.safety.llama_guard.guard import LlamaGuard
from llamarun.safety.llama_guard.model_handle import LeasedModel, LoadedModel

if TYPE_CHECKING:
    from llamarun.llm.chat_service import ModelSource

__all__ = ["LeasedModel", "LlamaGuard", "LoadedModel", "build_llama_guard"]


def build_llama_guard(name_or_path: str, *, source: ModelSource, excluded: Sequence[str] = (),
                      threshold: float = 0.5, categories: Mapping[str, str] | None = None,
                      keep_alive: float | None = None) -> LlamaGuard:
    """A Llama Guard whose model (`llama-guard3:1b`, `llama-guard3:8b`, a store name, a path to a GGUF file or
    an HF folder) is leased from `source` (the server's ModelManager, or any ModelSource) at each check.

    Nothing loads here: the first check (or `await guard.warm_up()`) loads the model. Bad excluded codes or
    a threshold outside (0, 1] raise LlamarunError at once.
    """
    return LlamaGuard(LeasedModel(source, name_or_path, keep_alive=keep_alive), excluded=excluded,
                      threshold=threshold, categories=categories)
