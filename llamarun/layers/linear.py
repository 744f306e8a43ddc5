"""Linear layers that know how checkpoint tensors map onto them."""

from __future__ import annotations

from torch import nn


class MergedLinear(nn.Linear):
    """Several projections of the same input computed as one matmul (q/k/v; gate/up).

    Checkpoints still store them apart under their own names (`q_proj`, `k_proj`, ...); `shards`
    says which rows of the merged weight each one fills, so loaders stay in the HF namespace.
    One larger kernel per layer instead of three costs less per token, above all on CPUs, where
    each call pays dispatch and activation-conversion overhead.
    """

    def __init__(self, in_features: int, shards: dict[str, int]) -> None:
        super().__init__(in_features, sum(shards.values()), bias=False)
        self.shards: dict[str, tuple[int, int]] = {}
        start = 0
        for name, rows in shards.items():
            self.shards[name] = (start, start + rows)
            start += rows
