"""Sentence embeddings from a decoder: pooled final hidden states, L2-normalized as Ollama's /api/embed does.

One prompt at a time, KV-free as far as the engine knows: the prompt runs through the model over a
throwaway contiguous cache of its own length (cache/contiguous.py), never the engine's paged blocks,
so embedding cannot evict or corrupt a running generation. The caller runs it on the engine hub's
thread (engine/hub.py), between engine steps, like all torch work of a served model.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Literal, TypeVar

import torch

from llamarun.attention.backend import use_backend
from llamarun.cache.contiguous import ContiguousKVCache
from llamarun.engine.hub import EngineHub
from llamarun.errors import UnsupportedError
from llamarun.models.llama import LlamaForCausalLM

Pooling = Literal["mean", "cls", "last"]
T = TypeVar("T")
CHUNK_TOKENS = 512  # prompt tokens per forward: bounds activation memory, as forward.py does


# llama.cpp's enum llama_pooling_type, as GGUF files store it in `<arch>.pooling_type`.
GGUF_POOLING: dict[int, Pooling] = {0: "mean", 1: "mean", 2: "cls", 3: "last"}  # 0 (none): our default


def checkpoint_pooling(path: Path | str) -> Pooling:
    """The pooling a checkpoint names, mean when it names none.

    A GGUF file: its `<arch>.pooling_type` (1 mean, 2 cls, 3 last; 4, rank, is a reranker's and refused).
    A folder: last-token when its sentence-transformers `1_Pooling/config.json` says
    `pooling_mode_lasttoken`, cls for `pooling_mode_cls_token`.
    """
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return _gguf_pooling(str(path), stat.st_mtime_ns, stat.st_size)
    config = path / "1_Pooling" / "config.json"
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "mean"
    if not isinstance(settings, dict):
        return "mean"
    return "last" if settings.get("pooling_mode_lasttoken") else "cls" if settings.get("pooling_mode_cls_token") \
        else "mean"


@functools.lru_cache(maxsize=16)
def _gguf_pooling(path: str, _mtime: int, _size: int) -> Pooling:
    """Cached per file version: embed calls ask per request, and a header read takes tens of milliseconds."""
    from llamarun.loaders.gguf.reader import read_gguf

    meta = read_gguf(path).metadata
    value = meta.get(f"{meta.get('general.architecture', 'llama')}.pooling_type")
    if value is None:
        return "mean"
    if int(value) not in GGUF_POOLING:
        raise UnsupportedError(f"{Path(path).name} names pooling type {value} (4 is a reranker's 'rank'), which "
                               "embeddings do not support", "use an embedding model with mean, cls or last pooling")
    return GGUF_POOLING[int(value)]


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
    if pooling == "last":
        return states[-1]  # [hidden]
    return states[0] if pooling == "cls" else states.mean(dim=0)  # [hidden]


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
