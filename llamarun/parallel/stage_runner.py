"""A pipeline stage's runner: the same plain-data step on every rank, each running its own layers.

Every rank gets each step from rank 0's broadcast (parallel/runner.py) and packs the same inputs. The
first stage embeds; the others wait for the previous stage's activations; all but the last hand theirs
on. Only the last stage keeps sampler state (seeded generators, penalty counts) and samples, from
logits every one of its tp ranks holds whole; its tp rank 0 sends the tokens to rank 0, which hands
them to the scheduler. A step that only fills the cache (prompt chunks that sample nothing) sends no
tokens back, and rank 0 knows it from the step itself, so no rank waits for what never comes.

The stages run one after another within a step: no micro-batches are in flight yet (see docs/parallel.md).
"""

from __future__ import annotations

import torch

from llamarun.attention.backend import use_backend
from llamarun.attention.paged_torch import PagedAttention, PagedKVCache
from llamarun.engine.batch import model_inputs, pack_step
from llamarun.engine.runner import ModelRunner
from llamarun.engine.step import SampledToken, SchedulerOutput
from llamarun.parallel.stage_model import StageModel


class StageRunner(ModelRunner):
    """Runs one stage's part of each step; on rank 0 returns what the last stage sampled."""

    def __init__(self, model: StageModel, cache: PagedKVCache) -> None:
        super().__init__(model, cache)  # type: ignore[arg-type]  # a stage, not a whole Llama
        self.stage, self.link = model.stage, model.link

    @torch.inference_mode()
    def run(self, step: SchedulerOutput) -> dict[str, SampledToken]:
        """Run this stage's layers for `step`; {request id: token} on rank 0 and the last stage, else {}."""
        if self.stage.is_last:
            self._update_states(step)
        if not step.seqs:
            return {}
        batch = pack_step(step, self.cache.block_size)
        inputs = model_inputs(batch, self.device)
        with use_backend(PagedAttention(self.cache, inputs.attention)):
            hidden = self.model.hidden(inputs.input_ids, inputs.positions)  # [2, tokens, hidden]
        samples = inputs.logits_rows is not None
        if not self.stage.is_last:
            self.link.send_hidden(hidden)
            return self.link.recv_tokens() if samples and self.link.waits_for_tokens else {}
        if not samples:
            return {}
        logits = self.model.logits(hidden, inputs.logits_rows)  # [S, vocab]
        states = [self.states[rid] for rid in batch.sample_ids]
        sampled = self._answer(self.sampler.sample(logits, states), batch.sample_ids, states)
        if self.link.reports_tokens:
            self.link.send_tokens(sampled)
        return sampled
