"""Perplexity, KL divergence from the reference, and top-1 agreement, summed window by window.

All in float32 log-softmax space; sums are kept as Python floats (double precision), so twenty
thousand tokens of small per-token KLs add up without loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Totals:
    """Sums over scored positions: negative log-likelihood, KL(reference || format), top-1 agreements."""

    tokens: int = 0
    nll: float = 0.0
    kl: float = 0.0
    agree: int = 0

    def add(self, other: Totals) -> None:
        self.tokens += other.tokens
        self.nll += other.nll
        self.kl += other.kl
        self.agree += other.agree

    @property
    def perplexity(self) -> float:
        """exp(mean negative log-likelihood of the text's next tokens)."""
        return math.exp(self.nll / self.tokens) if self.tokens else math.nan

    @property
    def mean_kl(self) -> float:
        """Mean KL divergence per token, in nats, of this format's next-token distribution from the reference's."""
        return self.kl / self.tokens if self.tokens else math.nan

    @property
    def top1(self) -> float:
        """Share of positions whose most likely next token is the reference's."""
        return self.agree / self.tokens if self.tokens else math.nan


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary in float32: [rows, vocab] -> [rows, vocab]."""
    return torch.log_softmax(logits.float(), dim=-1)


def compare(reference: torch.Tensor, candidate: torch.Tensor, targets: torch.Tensor) -> Totals:
    """Sums for rows of log-probabilities [rows, vocab] (reference and candidate) and the true next tokens [rows]."""
    nll = -candidate.gather(1, targets[:, None]).squeeze(1)  # [rows]
    p = reference.exp()  # [rows, vocab]
    # p * (log p - log q); a zero-probability entry adds nothing (and must not make 0 * inf a NaN).
    kl = torch.where(p > 0, p * (reference - candidate), 0.0).sum(dim=-1)  # [rows]
    agree = candidate.argmax(dim=-1) == reference.argmax(dim=-1)  # [rows]
    return Totals(tokens=int(targets.shape[0]), nll=float(nll.double().sum()), kl=float(kl.double().sum()),
                  agree=int(agree.sum()))
