"""Row operations on packed weights: merging q/k/v-style shards and reordering rows never expand."""

from __future__ import annotations

import pytest
import torch

from llamarun.errors import ConfigMismatchError
from llamarun.loaders.permute import interleaved_to_half_split
from llamarun.quant.convert.rows import cat_rows, map_rows
from llamarun.quant.layouts import Fp8Weight, Int4Weight, Int8Weight, dequantize, pack_nibbles


def int4(n: int, seed: int) -> Int4Weight:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, 64), generator=gen)
    return Int4Weight(pack_nibbles(q), torch.rand(n, 2, generator=gen), torch.randn(n, 2, generator=gen), 32)


def test_cat_rows_equals_cat_of_dequantized():
    parts = [int4(8, 0), int4(4, 1), int4(4, 2)]
    assert torch.equal(dequantize(cat_rows(parts)), torch.cat([dequantize(p) for p in parts]))
    i8 = [Int8Weight(torch.randint(-127, 128, (n, 16), dtype=torch.int8), torch.rand(n)) for n in (3, 5)]
    assert torch.equal(dequantize(cat_rows(i8)), torch.cat([dequantize(p) for p in i8]))


def test_fp8_per_tensor_scales_that_differ_become_per_channel():
    a = Fp8Weight(torch.randn(3, 16).to(torch.float8_e4m3fn), torch.tensor([0.5]))
    b = Fp8Weight(torch.randn(2, 16).to(torch.float8_e4m3fn), torch.tensor([2.0]))
    merged = cat_rows([a, b])
    assert merged.scale.numel() == 5
    assert torch.equal(dequantize(merged), torch.cat([dequantize(a), dequantize(b)]))
    same = cat_rows([a, Fp8Weight(b.weight, torch.tensor([0.5]))])
    assert same.scale.numel() == 1


def test_map_rows_reorders_every_per_row_tensor():
    w = int4(16, 3)
    reorder = lambda t: interleaved_to_half_split(t, 2)  # noqa: E731
    assert torch.equal(dequantize(map_rows(w, reorder)), reorder(dequantize(w)))


def test_merging_different_layouts_is_a_clear_error():
    with pytest.raises(ConfigMismatchError, match="packed differently"):
        cat_rows([int4(4, 0), Int8Weight(torch.zeros(4, 64, dtype=torch.int8), torch.ones(4))])
    other_group = Int4Weight(pack_nibbles(torch.zeros(4, 64)), torch.ones(4, 1), torch.zeros(4, 1), 64)
    with pytest.raises(ConfigMismatchError, match="group sizes"):
        cat_rows([int4(4, 0), other_group])
