"""The single-request generation loop: prefill, then decode token by token over a contiguous KV cache.

Token in, token out: templates, detokenization and stop strings live above it (api.py). It keeps
the tokens whose K/V are cached, so the next prompt that extends them (the next turn of a chat)
only prefills what is new. The batched engine replaces this file; model and sampler stay as they are.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from llamarun.cache.contiguous import ContiguousKVCache
from llamarun.engine.forward import forward_tokens
from llamarun.errors import LlamarunError
from llamarun.models.llama import LlamaForCausalLM
from llamarun.sampling.params import SamplingParams
from llamarun.sampling.sampler import Sampler, SamplerState


@dataclass
class GenerationStats:
    """Ollama's timing fields for one request (durations in seconds)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0
    done_reason: str = ""


class SingleRequestGenerator:
    """Runs one request at a time on `model`, reusing the cached prefix between requests."""

    def __init__(self, model: LlamaForCausalLM, context_length: int, dtype: torch.dtype,
                 device: str | torch.device) -> None:
        self.model = model
        self.context_length = context_length
        self.cache = ContiguousKVCache(model.config, context_length, dtype, device)
        self.cached_ids: list[int] = []
        self.sampler = Sampler()

    def reset(self) -> None:
        """Forget the cached prefix (e.g. after `/clear`)."""
        self.cache.truncate(0)
        self.cached_ids = []

    def generate(self, prompt_ids: list[int], params: SamplingParams, stop_ids: tuple[int, ...],
                 stats: GenerationStats | None = None) -> Iterator[int]:
        """Yield generated token ids until a stop id, `max_tokens`, or the end of the context.

        The stop id itself is not yielded. `stats` is filled in as the generation goes.
        """
        stats = stats if stats is not None else GenerationStats()
        if not prompt_ids:
            raise LlamarunError("the prompt is empty", "give some text to continue")
        if len(prompt_ids) >= self.context_length:
            raise LlamarunError(
                f"the prompt has {len(prompt_ids)} tokens, but the context holds {self.context_length}",
                "shorten the prompt or raise the context length (--ctx)",
            )
        stops = set(stop_ids) | set(params.stop_token_ids)
        t0 = time.perf_counter()
        logits = self._prefill(prompt_ids, stats)  # [vocab]
        stats.prompt_seconds = time.perf_counter() - t0
        state = SamplerState(params, prompt_ids)
        budget = params.max_tokens if params.max_tokens is not None else self.context_length
        t0 = time.perf_counter()
        try:
            while True:
                token = int(self.sampler(logits[None, :], [state])[0])
                if token in stops:
                    stats.done_reason = "stop"
                    return
                stats.generated_tokens += 1
                state.append(token)
                yield token
                if stats.generated_tokens >= budget or self.cache.length >= self.context_length:
                    stats.done_reason = "length"
                    return
                logits = forward_tokens(self.model, self.cache, [token])
                self.cached_ids.append(token)
        finally:
            stats.decode_seconds = time.perf_counter() - t0

    def _prefill(self, prompt_ids: list[int], stats: GenerationStats) -> torch.Tensor:
        # Reuse the longest cached prefix, but always run at least the last prompt token for its logits.
        common = 0
        limit = min(len(self.cached_ids), len(prompt_ids) - 1)
        while common < limit and self.cached_ids[common] == prompt_ids[common]:
            common += 1
        self.cache.truncate(common)
        self.cached_ids = list(prompt_ids)
        stats.prompt_tokens = len(prompt_ids)
        stats.cached_tokens = common
        return forward_tokens(self.model, self.cache, prompt_ids[common:])
