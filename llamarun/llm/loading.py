"""Load a model for serving: resolve, plan memory, build, and gather its text side."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.errors import LlamarunError
from llamarun.llm import prepared
from llamarun.quant.modes import choose_weights, pack_hook, weight_bytes
from llamarun.store.resolve import ResolvedModel, resolve_model
from llamarun.structured.vocab import GrammarVocab
from llamarun.utils.devices import check_device, default_device, default_dtype
from llamarun.utils.threads import prepare as prepare_threads

DEFAULT_CONTEXT = 4096  # Ollama's default num_ctx


@dataclass
class LoadedModel:
    """Everything needed to turn chats into tokens and tokens into text for one model."""

    name: str
    checkpoint: Any
    config: Any
    tokenizer: Any
    template: Any
    stop_ids: tuple[int, ...]
    engine: LLMEngine
    context_length: int
    device: str
    dtype: torch.dtype
    weights: str
    load_seconds: float
    memory_bytes: int
    # Seconds per load phase: "checks" (resolve, headers, memory plan, tokenizer), "weights" (read and
    # place every tensor, packing included), "engine" (KV cache and runner; "graphs" of it on GPUs).
    load_phases: dict[str, float] = field(default_factory=dict)

    def prompt_ids(self, prompt: str) -> list[int]:
        """A raw prompt, no template: bos is added when the tokenizer's convention says so."""
        return self.tokenizer.encode(prompt, add_bos=self.tokenizer.add_bos, allow_special=True)


def load_model(model: str | ResolvedModel, *, context_length: int | None = None, device: str | None = None,
               dtype: torch.dtype | None = None, weights: str = "auto", kv_tokens: int | None = None,
               progress: bool = False) -> LoadedModel:
    """Resolve `model` (store name or path), check it fits, and build it with its engine.

    `kv_tokens` sizes the shared KV cache (default: room for 4 full contexts).
    """
    from llamarun.chat.select import select_chat_template
    from llamarun.loaders.registry import open_checkpoint
    from llamarun.models.build import build_model
    from llamarun.parallel.layout import parallel_requested
    from llamarun.store.catalog import smaller_variants
    from llamarun.utils.memory import plan_memory
    from llamarun.utils.progress import count_bar

    t0 = time.perf_counter()
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
    ckpt = open_checkpoint(resolved.path, resolved.format)
    config = ckpt.config
    device = check_device(device or default_device())
    dtype = dtype or default_dtype(device)
    context = min(context_length or DEFAULT_CONTEXT, config.max_position_embeddings)
    if context < 16:
        raise LlamarunError(f"context length {context} is too small", "use at least 16 tokens")
    kv = max(kv_tokens or 4 * context, context)
    mode = choose_weights(weights, ckpt, device)
    if device == "cpu":
        prepare_threads()  # --threads, else the cores free now (the API too; the CLI chose before torch loaded)
    element = torch.finfo(dtype).bits // 8
    wbytes = weight_bytes(config, mode, element)
    parallel = parallel_requested()  # --tp/--pp or torchrun: each rank checks its own share (parallel/rank_memory.py)
    if not parallel:
        smaller = [(e.ref, e.approx_bytes) for e in smaller_variants(resolved.name, wbytes)]
        plan_memory(config, wbytes, kv, device=device, kv_bytes_per_element=element,
                    model_name=resolved.name, smaller=smaller, scratch_tokens=context).check()
    tokenizer = ckpt.tokenizer()
    template = select_chat_template(ckpt.chat_template, tokenizer)
    stop_ids = ckpt.stop_token_ids()
    t_checks = time.perf_counter()
    engine_config = EngineConfig(context_length=context, kv_tokens=kv)
    with count_bar("loading weights", len(ckpt.tensor_names), enabled=None if progress else False) as bar:
        if parallel:  # split over ranks (--tp N, --pp M, or started by torchrun): llamarun/parallel
            from llamarun.parallel.pipeline_launch import load_engine_over_ranks

            engine = load_engine_over_ranks(resolved.path, ckpt.format, engine_config, dtype, device, mode, config,
                                            on_tensor=lambda _name: bar.advance())
            t_weights = time.perf_counter()  # the shards load inside the engine's start: reported as weights
        else:
            key = prepared.key_for(resolved.path, mode, dtype) if device == "cpu" else None
            net = prepared.load(key) if key else None  # mapped from the llamarun home: nothing to convert
            if net is None:
                net = build_model(ckpt, dtype, device, on_tensor=lambda _name: bar.advance(),
                                  pack=pack_hook(mode), keep_packed=mode == "packed")
                if key:
                    prepared.save(key, net)
            else:
                bar.advance(len(ckpt.tensor_names))
            t_weights = time.perf_counter()
            # The engine never holds the tokenizer: grammars are compiled against its token bytes (the logits
            # may be wider than the tokenizer: padded ids are never allowed).
            vocab = GrammarVocab.from_tokenizer(tokenizer, stop_ids, config.vocab_size)
            engine = LLMEngine(net, engine_config, dtype=dtype, device=device, grammar_vocab=vocab)
    t_end = time.perf_counter()
    phases = {"checks": t_checks - t0, "weights": t_weights - t_checks, "engine": t_end - t_weights}
    graphs = getattr(engine.runner, "capture_seconds", 0.0)
    if graphs:
        phases["graphs"] = graphs
    return LoadedModel(
        name=resolved.name, checkpoint=ckpt, config=config, tokenizer=tokenizer, template=template,
        stop_ids=stop_ids, engine=engine, context_length=context, device=device, dtype=dtype,
        weights=mode, load_seconds=t_end - t0, memory_bytes=wbytes + engine.cache.nbytes, load_phases=phases,
    )
