"""Greedy's argmax kernels against torch's argmax: ties, NaN, ragged widths, many rows."""

from __future__ import annotations

import pytest
import torch

from llamarun.kernels.argmax import SLICE, argmax_rows


@pytest.mark.parametrize("width", [1, 7, SLICE, SLICE + 1, 3 * SLICE + 5])
def test_matches_torch_on_random_rows(device, width):
    x = torch.randn(5, width, device=device)
    assert torch.equal(argmax_rows(x), x.argmax(dim=-1))


def test_ties_go_to_the_first_index_across_slices(device):
    x = torch.zeros(3, 3 * SLICE + 9, device=device)
    x[0, [5, SLICE + 2, 2 * SLICE]] = 4.0  # tie in three slices
    x[1, [2 * SLICE + 7, 2 * SLICE + 8]] = 1.0  # tie in the last, ragged slice
    x[2] = -1.0  # all equal
    assert argmax_rows(x).tolist() == [5, 2 * SLICE + 7, 0] == x.argmax(dim=-1).tolist()


def test_nan_and_infinities_as_torch_treats_them(device):
    x = torch.randn(4, 2 * SLICE + 3, device=device)
    x[0, SLICE + 4] = float("nan")
    x[0, 3] = float("inf")  # NaN still wins, as in torch
    x[1, [SLICE + 1, 9]] = float("nan")  # the first NaN
    x[2, 17] = float("inf")
    x[3] = float("-inf")
    assert argmax_rows(x).tolist() == [SLICE + 4, 9, 17, 0] == x.argmax(dim=-1).tolist()


def test_strided_rows_and_bf16(device):
    big = torch.randn(4, SLICE + 100, device=device)
    rows = big[::2, :SLICE + 50]  # every other row, narrower than the storage
    assert torch.equal(argmax_rows(rows), rows.argmax(dim=-1))
    half = torch.randn(3, 500, device=device).to(torch.bfloat16)
    assert torch.equal(argmax_rows(half), half.argmax(dim=-1))


def test_layouts_it_cannot_read_are_refused(device):
    with pytest.raises(ValueError, match="contiguous non-empty rows"):
        argmax_rows(torch.randn(8, 4, device=device).t())
    with pytest.raises(ValueError, match="contiguous non-empty rows"):
        argmax_rows(torch.empty(2, 0, device=device))
