"""A pipeline stage's runner: the same plain-data step on every rank, each running its own layers.

Every rank gets each step from rank 0's broadcast (parallel/runner.py) and packs the same inputs. The
first stage embeds; the others wait for the previous stage's activations; all but the last hand theirs
on. Only the last stage keeps sampler state (seeded generators, penalty counts) and samples, from
logits every one of its tp ranks holds whole; its tp rank 0 sends the tokens to rank 0, which hands
them to the scheduler. A step that only fills the cache (prompt chunks that sample nothing) sends no
tokens back, and rank 0 knows it from the step itself, so no rank waits for what never comes.

Micro-batches: a step's sequences are split into up to `micro_batches` groups of about equal tokens
(every rank splits the same way), and each group goes through the stage and on to the next without
waiting for the send to land, so stage s + 1 works on group 1 while stage s runs group 2. A sequence
is never split: its prompt chunk's attention needs all of its tokens, and a decode is one token. One
step still ends before the scheduler makes the next, so a lone decode (one sequence) has no overlap.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from llamarun.attention.backend import use_backend
from llamarun.attention.paged_torch import PagedAttention, PagedKVCache
from llamarun.engine.batch import model_inputs, pack_step
from llamarun.engine.runner import ModelRunner
from llamarun.engine.step import SampledToken, ScheduledSeq, SchedulerOutput
from llamarun.parallel.stage_model import StageModel


def micro_batches(seqs: list[ScheduledSeq], parts: int) -> list[list[ScheduledSeq]]:
    """`seqs` in order, cut into at most `parts` contiguous groups of about equal token counts."""
    parts = max(1, min(parts, len(seqs)))
    share = sum(s.num_tokens for s in seqs) / parts
    groups: list[list[ScheduledSeq]] = [[]]
    done = 0
    for seq in seqs:
        # A sequence goes to the next group when its middle lies past this group's share of the tokens.
        if groups[-1] and len(groups) < parts and done + seq.num_tokens / 2 > share * len(groups):
            groups.append([])
        groups[-1].append(seq)
        done += seq.num_tokens
    return groups


class StageRunner(ModelRunner):
    """Runs one stage's part of each step; on rank 0 returns what the last stage sampled."""

    def __init__(self, model: StageModel, cache: PagedKVCache, micro_batches: int = 1) -> None:
        super().__init__(model, cache)  # type: ignore[arg-type]  # a stage, not a whole Llama
        self.stage, self.link = model.stage, model.link
        self.micro_batches = micro_batches
        self.parts_run = 0  # micro-batches run so far (tests read it)

    @torch.inference_mode()
    def run(self, step: SchedulerOutput) -> dict[str, SampledToken]:
        """Run this stage's layers for `step`; {request id: token} on rank 0 and the last stage, else {}."""
        if self.stage.is_last:
            self._update_states(step)
        if not step.seqs:
            return {}
        sends: list[Any] = []
        sampled: dict[str, SampledToken] = {}
        for seqs in micro_batches(step.seqs, self.micro_batches):
            sampled.update(self._run_part(dataclasses.replace(step, seqs=seqs), sends))
        self.link.finish_sends(sends)
        samples = any(seq.samples for seq in step.seqs)
        if not self.stage.is_last:
            return self.link.recv_tokens() if samples and self.link.waits_for_tokens else {}
        if samples and self.link.reports_tokens:
            self.link.send_tokens(sampled)
        return sampled

    def _run_part(self, part: SchedulerOutput, sends: list[Any]) -> dict[str, SampledToken]:
        """One micro-batch through this stage: handed on (the send left in flight in `sends`), or sampled."""
        self.parts_run += 1
        batch = pack_step(part, self.cache.block_size)
        inputs = model_inputs(batch, self.device)
        with use_backend(PagedAttention(self.cache, inputs.attention)):
            hidden = self.model.hidden(inputs.input_ids, inputs.positions)  # [2, tokens, hidden]
        if not self.stage.is_last:
            sends.append(self.link.start_send_hidden(hidden))
            return {}
        if inputs.logits_rows is None:
            return {}
        logits = self.model.logits(hidden, inputs.logits_rows)  # [S, vocab]
        states = [self.states[rid] for rid in batch.sample_ids]
        return self._answer(self.sampler.sample(logits, states), batch.sample_ids, states)
