"""Eval metrics against torch's own cross-entropy and KL divergence."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llamarun.eval.metrics import Totals, compare, log_probs


def test_sums_equal_torch_cross_entropy_and_kl_div() -> None:
    gen = torch.Generator().manual_seed(0)
    ref_logits = torch.randn(37, 300, generator=gen) * 3
    cand_logits = ref_logits + 0.3 * torch.randn(37, 300, generator=gen)
    targets = torch.randint(0, 300, (37,), generator=gen)
    got = compare(log_probs(ref_logits), log_probs(cand_logits), targets)
    assert got.tokens == 37
    assert math.isclose(got.nll, float(F.cross_entropy(cand_logits.double(), targets, reduction="sum")), rel_tol=1e-5)
    want_kl = F.kl_div(F.log_softmax(cand_logits.double(), -1), F.log_softmax(ref_logits.double(), -1),
                       log_target=True, reduction="sum")
    assert got.kl > 0
    assert math.isclose(got.kl, float(want_kl), rel_tol=1e-4)
    assert got.agree == int((cand_logits.argmax(-1) == ref_logits.argmax(-1)).sum())
    assert 0 < got.agree < 37


def test_a_distribution_against_itself() -> None:
    rows = log_probs(torch.randn(10, 50, generator=torch.Generator().manual_seed(1)))
    got = compare(rows, rows, torch.zeros(10, dtype=torch.long))
    assert got.kl == 0.0 and got.agree == 10


def test_zero_probability_entries_add_nothing() -> None:
    ref = torch.tensor([[0.0, float("-inf")]])  # all mass on token 0
    cand = log_probs(torch.tensor([[1.0, 0.0]]))
    got = compare(ref, cand, torch.tensor([0]))
    assert math.isclose(got.kl, -float(cand[0, 0]), rel_tol=1e-6)


def test_totals_add_and_derive() -> None:
    total = Totals()
    total.add(Totals(tokens=2, nll=2.0, kl=0.02, agree=1))
    total.add(Totals(tokens=2, nll=4.0, kl=0.02, agree=2))
    assert math.isclose(total.perplexity, math.exp(1.5))
    assert math.isclose(total.mean_kl, 0.01) and total.top1 == 0.75
    assert math.isnan(Totals().perplexity)
