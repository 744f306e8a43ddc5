"""The model runner: one plain-data step in, sampled tokens out.

It owns everything per request that lives next to the model: the sampler state (seeded generator,
penalty counts, grammar matcher) of every request the scheduler has sent it, created from the step's
`new_requests` and dropped for its `finished_ids`. Inputs are packed by `engine.batch` (decodes first), attention
reads them through `PagedAttention`, and the batched sampler picks the tokens.
"""

from __future__ import annotations

import torch

from llamarun.attention.backend import use_backend
from llamarun.attention.paged_torch import PagedAttention, PagedKVCache
from llamarun.engine.batch import model_inputs, pack_step
from llamarun.engine.cpu_decode import DecodeStep
from llamarun.engine.step import PENDING, SampledToken, ScheduledSeq, SchedulerOutput
from llamarun.errors import LlamarunError
from llamarun.models.llama import LlamaForCausalLM
from llamarun.sampling.params import SamplingParams
from llamarun.sampling.sampler import Sampler, SamplerOutput, SamplerState
from llamarun.structured.engine import GrammarMatcher, compile_grammar
from llamarun.structured.vocab import GrammarVocab

__all__ = ["ModelRunner", "SampledToken"]

_UNSET = object()


class ModelRunner:
    """Runs a SchedulerOutput through the model on the paged cache and samples the next tokens.

    `grammar_vocab` (the model's token bytes and stop ids) lets requests carry a GrammarSpec; without it a
    grammar request is refused by the engine before it reaches the runner.

    `launch`/`collect` split `run` for overlapped decoding (the engine plans the next step while this one
    runs). Here `launch` runs the step whole, so the split only serves tests of the engine's pipeline;
    `overlap` says whether the engine should use it (the CUDA runner, where it hides the host's work).
    """

    overlap = False

    def __init__(self, model: LlamaForCausalLM, cache: PagedKVCache, grammar_vocab: GrammarVocab | None = None
                 ) -> None:
        self.model, self.cache = model, cache
        self.grammar_vocab = grammar_vocab
        self.device = cache.k.device
        self.sampler = Sampler()
        self.states: dict[str, SamplerState] = {}  # request id -> its sampler state
        self.native_decode: DecodeStep | object | None = _UNSET  # chosen on the first step

    @torch.inference_mode()  # penalty counts are made and updated in place here: keep them inference tensors
    def run(self, step: SchedulerOutput) -> dict[str, SampledToken]:
        """Apply the step's state changes, run its sequences, sample; {request id: token} for sampling ones."""
        self._update_states(step)
        if not step.seqs:
            return {}
        batch = pack_step(step, self.cache.block_size)
        fused = self._native_decode()
        if fused is not None and fused.takes(batch):
            logits = fused(batch)  # [S, vocab]: a CPU all-decode step in one native call (engine/cpu_decode.py)
        else:
            inputs = model_inputs(batch, self.device)
            with use_backend(PagedAttention(self.cache, inputs.attention)):
                if inputs.logits_rows is None:
                    self.model.model(inputs.input_ids, inputs.positions)  # prefill chunks only: fill the cache
                    return {}
                logits = self.model(inputs.input_ids, inputs.positions, inputs.logits_rows)  # [S, vocab]
        states = [self.states[rid] for rid in batch.sample_ids]
        return self._answer(self.sampler.sample(logits, states), batch.sample_ids, states)

    def _native_decode(self) -> DecodeStep | None:
        """The native decode step for this model and cache, made on the first step (None where it does not apply)."""
        if self.native_decode is _UNSET:
            self.native_decode = DecodeStep.for_model(self.model, self.cache) if self.device.type == "cpu" else None
        return self.native_decode  # type: ignore[return-value]

    def _update_states(self, step: SchedulerOutput) -> None:
        """Drop the sampler state of finished requests, then make it for new ones (in that order)."""
        for request_id in step.finished_ids:
            self.states.pop(request_id, None)
        for new in step.new_requests:
            self.states[new.request_id] = SamplerState(new.params, new.token_ids, self._matcher(new.params))

    def _matcher(self, params: SamplingParams) -> GrammarMatcher | None:
        """A fresh matcher of the request's grammar (compiled once per vocabulary and spec, then cached)."""
        if params.grammar is None:
            return None
        if self.grammar_vocab is None:
            raise LlamarunError("this engine has no vocabulary to compile grammars against",
                                "build the engine with grammar_vocab (load_model does)")
        return GrammarMatcher(compile_grammar(self.grammar_vocab, params.grammar))

    @staticmethod
    def _answer(result: SamplerOutput, sample_ids: list[str], states: list[SamplerState]) -> dict[str, SampledToken]:
        tokens = result.token_ids.tolist()  # the one host sync of the step
        scores = _host_scores(result)  # and, when a row asked for logprobs, one copy of them all
        sampled = {}
        for i, (rid, state) in enumerate(zip(sample_ids, states, strict=True)):
            state.append(tokens[i])
            sampled[rid] = _sampled_token(scores, i, tokens[i], state.params.logprobs)
        return sampled


    # ----- overlapped decoding -----

    def can_overlap(self, step: SchedulerOutput) -> bool:
        """Whether `step` may run while the host plans the next: every sequence a decode that samples, under
        params whose next sample does not depend on this one's token on the host (no penalties, grammar or
        logprobs)."""
        if not self.overlap or not step.seqs:
            return False
        params = {new.request_id: new.params for new in step.new_requests}
        for seq in step.seqs:
            state = self.states.get(seq.request_id)
            p = state.params if state is not None else params.get(seq.request_id)
            if (p is None or len(seq.token_ids) != 1 or not seq.samples or seq.start == 0 or p.uses_penalties
                    or p.grammar is not None or p.logprobs is not None):
                return False
        return True

    def launch(self, step: SchedulerOutput, prev: object | None = None) -> object:
        """Start `step`; its PENDING tokens are `prev`'s samples. Returns what `collect` takes."""
        if prev is not None:  # here a launched step is already done: its answer holds the tokens
            step = SchedulerOutput([_resolved(seq, prev) for seq in step.seqs], step.new_requests,
                                   step.finished_ids, step.preempted_ids)
        return self.run(step)

    def collect(self, launched: object, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, SampledToken]:
        """The tokens of a launched step, but for requests in `skip` (finished or aborted since)."""
        return {rid: token for rid, token in launched.items() if rid not in skip}

def _host_scores(result: SamplerOutput) -> tuple[list, list | None, list | None] | None:
    """The step's logprobs on the host as lists, one copy per tensor (a read per row would sync per row)."""
    if result.logprobs is None:
        return None
    top_ids = result.top_token_ids.tolist() if result.top_token_ids is not None else None
    top_logps = result.top_logprobs.tolist() if result.top_logprobs is not None else None
    return result.logprobs.tolist(), top_ids, top_logps


def _sampled_token(scores: tuple[list, list | None, list | None] | None, row: int, token_id: int,
                   logprobs: int | None) -> SampledToken:
    token = SampledToken(token_id)
    if logprobs is not None and scores is not None:
        chosen, top_ids, top_logps = scores
        token.logprob = float(chosen[row])
        if logprobs and top_ids is not None and top_logps is not None:
            token.top = list(zip(top_ids[row][:logprobs], top_logps[row][:logprobs], strict=True))
    return token


def _resolved(seq: ScheduledSeq, sampled: dict[str, SampledToken]) -> ScheduledSeq:
    """`seq` with its PENDING token replaced by the one `sampled` holds for it."""
    if seq.token_ids != [PENDING]:
        return seq
    return ScheduledSeq(seq.request_id, [sampled[seq.request_id].token_id], seq.start, seq.block_table, seq.samples)
