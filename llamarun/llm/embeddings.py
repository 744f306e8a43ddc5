"""Sentence embeddings from a decoder: pooled final hidden states, L2-normalized as Ollama's /api/embed does.

One prompt at a time, KV-free as far as the engine knows: the prompt runs through the model over a
throwaway contiguous cache of its own length (cache/contiguous.py), never the engine's paged blocks,
so embedding cannot evict or corrupt a running generation. The caller runs it on the engine hub's
thread (engine/hub.py), between engine steps, like all torch work of a served model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Literal, TypeVar

import torch

from llamarun.attention.backend import use_backend
from llamarun.cache.contiguous import ContiguousKVCache
from llamarun.engine.hub import EngineHub
from llamarun.models.llama import LlamaForCausalLM

Pooling = Literal["mean", "last"]
T = TypeVar("T")
CHUNK_TOKENS = 512  # prompt tokens per forward: bounds activation memory, as forward.py does


def checkpoint_pooling(path: Path | str) -> Pooling:
    """The pooling a checkpoint names: last-token when its sentence-transformers `1_Pooling/config.json`
    says `pooling_mode_lasttoken`, mean otherwise (also for formats that name none, GGUF included)."""
    config = Path(path) / "1_Pooling" / "config.json"
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "mean"
    return "last" if isinstance(settings, dict) and settings.get("pooling_mode_lasttoken") else "mean"


@torch.inference_mode()
def final_hidden_states(model: LlamaForCausalLM, token_ids: list[int], dtype: torch.dtype,
                        device: torch.device | str) -> torch.Tensor:
    """The decoder's last (normed) hidden states [tokens, hidden] for one prompt, in float32."""
    cache = ContiguousKVCache(model.config, len(token_ids), dtype, device)
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=device)  # [tokens]
    states = []
    for start in range(0, ids.shape[0], CHUNK_TOKENS):
        chunk = ids[start:start + CHUNK_TOKENS]  # [n]
        positions = torch.arange(start, start + chunk.shape[0], device=device)  # [n]
        with use_backend(cache.step(chunk.shape[0])):
            states.append(model.model(chunk, positions).float())  # [n, hidden]
    return torch.cat(states)  # [tokens, hidden]


def pool(states: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One vector [hidden] from per-token states [tokens, hidden]."""
    return states[-1] if pooling == "last" else states.mean(dim=0)


def normalized(vector: torch.Tensor, dimensions: int | None = None) -> list[float]:
    """The first `dimensions` entries (all by default), scaled to unit L2 length (a zero vector stays zero)."""
    kept = vector[:dimensions] if dimensions is not None else vector  # [dimensions]
    norm = torch.linalg.vector_norm(kept)
    return (kept / norm if norm > 0 else kept).tolist()


def embed_one(model: LlamaForCausalLM, token_ids: list[int], *, dtype: torch.dtype, device: torch.device | str,
              pooling: Pooling = "mean", dimensions: int | None = None) -> list[float]:
    """The normalized embedding of one prompt (ids already fit to the context: see llm/embed_inputs.py)."""
    return normalized(pool(final_hidden_states(model, token_ids, dtype, device), pooling), dimensions)


async def on_hub(hub: EngineHub, fn: Callable[[], T]) -> T:
    """Run `fn` on the hub's thread between engine steps, awaiting it without blocking the event loop."""
    done: Future[T] = Future()

    def task() -> None:
        if not done.set_running_or_notify_cancel():
            return  # the caller went away before it ran: skip the work
        try:
            done.set_result(fn())
        except BaseException as err:
            done.set_exception(err)

    hub.call(task)
    return await asyncio.wrap_future(done)
