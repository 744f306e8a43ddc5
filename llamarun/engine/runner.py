"""The model runner: one packed batch per step — inputs built, model run, next tokens sampled."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llamarun.attention.backend import use_backend
from llamarun.attention.paged_torch import PagedAttention, PagedKVCache, SeqSlice
from llamarun.engine.scheduler import SchedulerOutput
from llamarun.models.llama import LlamaForCausalLM
from llamarun.sampling.sampler import Sampler


@dataclass
class SampledToken:
    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None  # (token id, logprob), most likely first


class ModelRunner:
    """Turns a SchedulerOutput into model inputs and sampled tokens."""

    def __init__(self, model: LlamaForCausalLM, cache: PagedKVCache) -> None:
        self.model, self.cache = model, cache
        self.device = cache.k.device
        self.sampler = Sampler()

    @torch.inference_mode()
    def run(self, out: SchedulerOutput) -> dict[str, SampledToken]:
        bs = self.cache.block_size
        ids: list[int] = []
        positions: list[int] = []
        new_slots: list[int] = []
        seqs: list[SeqSlice] = []
        rows: list[int] = []
        sampling = []
        for s in out.seqs:
            req = s.request
            start, end = req.num_computed, req.num_computed + s.num_tokens
            ids.extend(req.token_slice(start, end))
            positions.extend(range(start, end))
            table = req.block_table
            new_slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            blocks = torch.tensor(table[: -(-end // bs)], dtype=torch.long)  # [blocks] holding tokens [0, end)
            slots = None
            if s.num_tokens > 1:  # prefill chunks gather by token slot; decodes gather whole blocks
                pos = torch.arange(end)
                slots = (blocks[pos // bs] * bs + pos % bs).to(self.device)  # [end]
            seqs.append(SeqSlice(len(ids) - s.num_tokens, s.num_tokens, end, slots, blocks.to(self.device)))
            if s.samples:
                rows.append(len(ids) - 1)
                sampling.append(req)
        slot_mapping = torch.tensor(new_slots, dtype=torch.long, device=self.device)  # [tokens]
        backend = PagedAttention(self.cache, slot_mapping, seqs)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)  # [tokens]
        pos_t = torch.tensor(positions, dtype=torch.long, device=self.device)
        if not sampling:
            with use_backend(backend):
                self.model.model(input_ids, pos_t)  # prefill chunks only: fill the cache, no logits
            return {}
        with use_backend(backend):
            logits = self.model(input_ids, pos_t, torch.tensor(rows, device=self.device))  # [S, vocab]
        result = self.sampler.sample(logits, [r.sampler_state for r in sampling])
        tokens = result.token_ids.tolist()  # the one host sync of the step
        sampled = {}
        for i, req in enumerate(sampling):
            token = SampledToken(tokens[i])
            if req.params.logprobs is not None and result.logprobs is not None:
                token.logprob = float(result.logprobs[i])
                n = req.params.logprobs
                if n and result.top_token_ids is not None:
                    ids, logps = result.top_token_ids[i, :n].tolist(), result.top_logprobs[i, :n].tolist()
                    token.top = list(zip(ids, logps, strict=True))
            sampled[req.request_id] = token
        return sampled
