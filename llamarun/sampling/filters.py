"""Top-k, top-p and min-p filters and the sync-free draw, batched with per-row parameters.

Filters work on "candidates": a [R, C] block of (temperature-scaled) logits with a matching block of
token ids. Top-k gives C = max k of the rows; top-p needs its candidates sorted, so rows without
top-k sort the whole vocabulary; rows with neither keep the unsorted vocabulary (min-p needs no order).
A removed candidate is set to -inf, which the draw can never pick.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_NEG_INF = float("-inf")


def top_k_candidates(logits: Tensor, top_k: Tensor | None, k_max: int) -> tuple[Tensor, Tensor]:
    """The k_max best logits of each row, sorted descending, with columns past each row's k at -inf.

    `logits` [R, V], `top_k` [R, 1] int64 (every entry in 1..k_max), or None when every row's k is
    k_max. Returns values [R, k_max] and their token ids [R, k_max]. Exactly k tokens stay even when
    logits tie at the boundary (llama.cpp's rule).
    """
    values, ids = logits.topk(k_max, dim=-1)  # [R, K] each, sorted descending
    if top_k is not None:
        column = torch.arange(k_max, device=logits.device)  # [K]
        values = values.masked_fill(column[None, :] >= top_k, _NEG_INF)  # [R, K]
    return values, ids


def sorted_candidates(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Every logit of each row, sorted descending, with token ids: values [R, V], ids [R, V]."""
    return logits.sort(dim=-1, descending=True)


def apply_top_p(sorted_values: Tensor, top_p: Tensor | float) -> Tensor:
    """Keep the smallest prefix of each sorted row whose probability mass reaches its top_p.

    `top_p` is [R, 1] or one float for all rows.
    A candidate stays if the mass of the candidates strictly before it is below top_p, so the most
    likely token always stays and the kept mass is >= top_p. Rows with top_p = 1 keep every candidate.
    """
    if not isinstance(top_p, Tensor) and top_p >= 1.0:
        return sorted_values
    probs = sorted_values.softmax(dim=-1)  # [R, C]
    mass_before = probs.cumsum(dim=-1) - probs  # [R, C] exclusive prefix sums
    drop = mass_before >= top_p  # [R, C]
    if isinstance(top_p, Tensor):
        drop &= top_p < 1.0  # rounding can push the mass before the last token to 1.0
    return sorted_values.masked_fill(drop, _NEG_INF)


def apply_min_p(values: Tensor, min_p: Tensor | float) -> Tensor:
    """Drop candidates whose probability is below min_p ([R, 1] or a float) times the row's best one.

    p_i >= min_p * p_max is log-space `l_i >= l_max + log(min_p)`, so no softmax is needed, and the
    test gives the same answer before or after top-p renormalises the survivors.
    """
    l_max = values.amax(dim=-1, keepdim=True)  # [R, 1]
    log_min_p = torch.log(min_p) if isinstance(min_p, Tensor) else math.log(min_p) if min_p > 0 else _NEG_INF
    threshold = l_max + log_min_p  # [R, 1]; log(0) = -inf keeps everything
    return values.masked_fill(values < threshold, _NEG_INF)


def exponential_argmax(values: Tensor, noise: Tensor) -> Tensor:
    """Draw one column per row, with probability softmax(values), from Exponential(1) `noise`.

    argmax(p_i / E_i) with E_i ~ Exp(1) picks i with probability p_i (gpt-fast's trick: no
    cumulative sums, no multinomial, no host sync). It is computed in log space, argmax(l_i - log E_i),
    which is the same draw without normalising, and keeps tokens whose probability underflows float32.
    `values` [R, C] with -inf for removed candidates, `noise` [R, C] > 0. Returns columns [R] int64.
    """
    tiny = torch.finfo(noise.dtype).tiny
    scores = values - noise.clamp_min(tiny).log()  # [R, C]
    return scores.argmax(dim=-1)  # [R]
