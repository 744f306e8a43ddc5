"""The batched sampler: logits [B, V] with per-row parameters in, token ids [B] out.

Order (DESIGN decision 8): penalties, grammar mask, temperature, top-k, top-p, min-p, then a draw that
needs no host sync. Rows are split by the path their own parameters need (greedy; top-k; top-p without
top-k, which sorts the vocabulary; neither), so a row never takes a different path because of its
neighbours. Each sampled row draws a full vocabulary of Exponential(1) noise from its own generator,
indexed by token id, so a seeded request gives the same tokens whatever else shares its batch.

Log-probabilities follow vLLM's (V1) rule: the log-softmax of the raw model logits, before penalties,
grammar mask and temperature, i.e. the model's own distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llamarun.layers.fused import use_kernels
from llamarun.sampling.filters import (
    apply_min_p,
    apply_top_p,
    exponential_argmax,
    sorted_candidates,
    top_k_candidates,
)
from llamarun.sampling.params import SamplingParams
from llamarun.sampling.penalties import TokenCounts, apply_penalties
from llamarun.structured.bitmask import GrammarMasker
from llamarun.structured.engine import GrammarMatcher

log = logging.getLogger(__name__)


class SamplerState:
    """What the sampler keeps for one request: its params, generator, penalty counts and grammar matcher.

    Call `append(token_id)` with every token the request generates (the engine already has them as
    Python ints after its one sync per step). The generator is made on the logits' device at the first
    sample, seeded from `params.seed`; unseeded requests use torch's default generator of that device.
    `grammar` (a matcher of the request's compiled GrammarSpec) limits each draw to what it allows.
    """

    def __init__(self, params: SamplingParams, prompt_token_ids: Sequence[int] = (),
                 grammar: GrammarMatcher | None = None) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        self.num_generated = 0
        self.counts = TokenCounts(params.repeat_last_n, prompt_token_ids) if params.uses_penalties else None
        self.grammar = grammar

    def append(self, token_id: int) -> None:
        """Record a generated token (updates penalty counts and advances the grammar in place)."""
        self.num_generated += 1
        if self.counts is not None:
            self.counts.append(int(token_id))
        if self.grammar is not None and not self.grammar.accept(token_id):
            # Only a token the mask allowed can be drawn, so this is a bug; one request must not stop the engine.
            log.error("the grammar refused token %d that its own mask allowed", token_id)

    def generator_on(self, device: torch.device) -> torch.Generator | None:
        """The request's seeded generator on `device` (made on first use), or None when unseeded."""
        if self.params.seed is None:
            return None
        if self.generator is None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.params.seed)
        return self.generator


@dataclass
class SamplerOutput:
    """Tokens chosen for each row, and log-probabilities for rows whose params ask for them.

    token_ids [B] int64. When any row asks: logprobs [B] float32 (NaN for rows that did not ask),
    top_token_ids / top_logprobs [B, N] with N the largest request; a row asking for n uses the
    first n columns.
    """

    token_ids: Tensor
    logprobs: Tensor | None = None
    top_token_ids: Tensor | None = None
    top_logprobs: Tensor | None = None


class Sampler:
    """Picks the next token of every row of a batch, each row under its own SamplingParams."""

    def __init__(self) -> None:
        self.masker = GrammarMasker()  # host buffers of the grammar mask, reused step after step

    def __call__(self, logits: Tensor, states: Sequence[SamplerState],
                 allowed: Tensor | None = None) -> Tensor:
        """Token ids [B] int64 for `logits` [B, V]; `allowed` [B, V'<=V] bool is an optional grammar mask."""
        return self.sample(logits, states, allowed).token_ids

    def sample(self, logits: Tensor, states: Sequence[SamplerState], allowed: Tensor | None = None
               ) -> SamplerOutput:
        """Like `__call__`, but also returns log-probabilities for rows that ask for them."""
        if logits.dim() != 2 or logits.shape[0] != len(states):
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(states)} sampler states")
        batch = logits.shape[0]
        device = logits.device
        raw = logits.float()  # [B, V]; float32 math whatever the model's dtype
        x = self._penalise(raw, states)
        grammar_rows = [i for i, s in enumerate(states) if s.grammar is not None]
        if grammar_rows:  # batches without a grammar pay nothing
            x = self.masker.apply(x, grammar_rows, [states[i].grammar for i in grammar_rows])
        if allowed is not None:
            x = _mask_disallowed(x, allowed)

        groups: dict[str, list[int]] = {}
        for i, state in enumerate(states):
            groups.setdefault(_path(state.params), []).append(i)
        if len(groups) == 1:  # the common case: one path for the whole batch, no gather or scatter
            (name, rows), = groups.items()
            tokens = _choose(x, [states[i] for i in rows], name)  # [B]
        else:
            tokens = torch.empty(batch, dtype=torch.long, device=device)  # [B]
            for name, rows in groups.items():
                idx = _index(rows, device)
                tokens.index_copy_(0, idx, _choose(x.index_select(0, idx), [states[i] for i in rows], name))
        return _with_logprobs(SamplerOutput(tokens), raw, states)

    @staticmethod
    def _penalise(x: Tensor, states: Sequence[SamplerState]) -> Tensor:
        rows = [i for i, s in enumerate(states) if s.counts is not None]
        if not rows:
            return x
        batch, vocab = x.shape
        device = x.device
        counts = torch.stack([states[i].counts.vector(vocab, device) for i in rows])  # [R, V] int32
        rep = _per_row([states[i].params.repetition_penalty for i in rows], device)  # [R, 1] or float
        pres = _per_row([states[i].params.presence_penalty for i in rows], device)
        freq = _per_row([states[i].params.frequency_penalty for i in rows], device)
        if len(rows) == batch:
            return apply_penalties(x, counts, rep, pres, freq)
        idx = _index(rows, device)
        return x.index_copy(0, idx, apply_penalties(x.index_select(0, idx), counts, rep, pres, freq))


def _path(params: SamplingParams) -> str:
    if params.is_greedy:
        return "greedy"
    if params.top_k > 0:
        return "top_k"
    return "sorted" if params.top_p < 1.0 else "plain"


def _choose(x: Tensor, states: list[SamplerState], path: str) -> Tensor:
    """Token ids [R] for rows `x` [R, V] that all take `path`."""
    if path != "greedy":
        return _sample_rows(x, states, path)
    if use_kernels(x) and x.stride(-1) == 1:
        from llamarun.kernels.argmax import argmax_rows

        return argmax_rows(x)  # many programs over the row, not torch's one block (27.5 us at 128k on an H200)
    return x.argmax(dim=-1)


def _sample_rows(x: Tensor, states: list[SamplerState], path: str) -> Tensor:
    """Temperature, top-k, top-p, min-p and the draw for rows that all take `path`. x [R, V]."""
    device = x.device
    vocab = x.shape[1]
    params = [s.params for s in states]
    x = x / _per_row([p.temperature for p in params], device)  # [R, V]
    if path == "top_k":
        ks = [min(p.top_k, vocab) for p in params]
        k_column = None if min(ks) == max(ks) else _index(ks, device)[:, None]  # [R, 1]
        values, ids = top_k_candidates(x, k_column, max(ks))  # [R, K] each
    elif path == "sorted":
        values, ids = sorted_candidates(x)  # [R, V] each
    else:
        values, ids = x, None
    if any(p.top_p < 1.0 for p in params) and ids is not None:
        values = apply_top_p(values, _per_row([p.top_p for p in params], device))
    if any(p.min_p > 0.0 for p in params):
        values = apply_min_p(values, _per_row([p.min_p for p in params], device))
    noise = _exponential_noise(states, x, ids)  # [R, C]
    chosen = exponential_argmax(values, noise)  # [R] column
    return chosen if ids is None else ids.gather(1, chosen[:, None])[:, 0]


def _exponential_noise(states: list[SamplerState], like: Tensor, ids: Tensor | None) -> Tensor:
    """Exponential(1) noise for each row's candidates `ids` [R, C] (all of `like` [R, V] when None).

    A seeded row draws a full vocabulary from its own generator, indexed by token id, so its noise depends on
    neither its candidates nor the other rows. Unseeded rows share one draw from torch's default generator,
    of just the candidates: on CPUs a vocabulary-wide draw cost 1.1 ms a token (49k tokens, default sampling),
    a third of the default model's decode step, for 40 values that are read.
    """
    generators = [s.generator_on(like.device) for s in states]
    if all(g is None for g in generators):
        return torch.empty(like.shape if ids is None else ids.shape, dtype=like.dtype, device=like.device
                           ).exponential_()
    noise = torch.empty_like(like)  # [R, V]
    for row, generator in enumerate(generators):
        noise[row].exponential_(generator=generator)
    return noise if ids is None else noise.gather(1, ids)


def _mask_disallowed(x: Tensor, allowed: Tensor) -> Tensor:
    """Set logits of tokens the grammar forbids to -inf; columns past the mask's width are forbidden."""
    if allowed.dtype != torch.bool or allowed.dim() != 2 or allowed.shape[0] != x.shape[0] \
            or allowed.shape[1] > x.shape[1]:
        raise ValueError(f"grammar mask must be bool [{x.shape[0]}, <= {x.shape[1]}], "
                         f"got {allowed.dtype} {tuple(allowed.shape)}")
    if allowed.shape[1] < x.shape[1]:
        # Padded vocabularies: the grammar knows only the tokenizer's ids.
        pad = allowed.new_zeros((x.shape[0], x.shape[1] - allowed.shape[1]))
        allowed = torch.cat([allowed, pad], dim=1)  # [B, V]
    return x.masked_fill(~allowed.to(x.device), float("-inf"))


def _with_logprobs(out: SamplerOutput, raw: Tensor, states: Sequence[SamplerState]) -> SamplerOutput:
    rows = [i for i, s in enumerate(states) if s.params.logprobs is not None]
    if not rows:
        return out
    device = raw.device
    idx = _index(rows, device)
    logp = raw.index_select(0, idx).log_softmax(dim=-1)  # [R, V]
    n = max(states[i].params.logprobs for i in rows)
    batch = raw.shape[0]
    out.logprobs = torch.full((batch,), float("nan"), device=device)
    out.logprobs.index_copy_(0, idx, logp.gather(1, out.token_ids.index_select(0, idx)[:, None])[:, 0])
    top_values, top_ids = logp.topk(n, dim=-1)  # [R, N] each
    out.top_logprobs = torch.full((batch, n), float("nan"), device=device).index_copy_(0, idx, top_values)
    out.top_token_ids = torch.full((batch, n), -1, dtype=torch.long, device=device)
    out.top_token_ids.index_copy_(0, idx, top_ids)
    return out


def _index(values: list[int], device: torch.device) -> Tensor:
    return _to_device(torch.tensor(values, dtype=torch.long), device)


def _per_row(values: list[float], device: torch.device) -> Tensor | float:
    """One float when every row agrees (no transfer), else a [R, 1] column on `device`."""
    if min(values) == max(values):
        return float(values[0])
    return _to_device(torch.tensor(values, dtype=torch.float32)[:, None], device)  # [R, 1]


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Host -> device copy of a small tensor without a host sync (pinned memory, non-blocking)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
