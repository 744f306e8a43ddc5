"""silu(gate) * up from the merged gate/up output, against the model's chunk + silu + mul."""

from __future__ import annotations

import torch

from llamarun.kernels.activation import silu_and_mul, silu_and_mul_reference


def test_silu_and_mul_matches_reference(assert_close, device, dtype):
    width = 1500  # two column blocks, the second ragged
    x = (torch.randn(3, 2 * width) * 4).to(dtype).to(device)
    out = silu_and_mul(x)
    assert out.shape == (3, width) and out.dtype == dtype
    assert_close(out, silu_and_mul_reference(x))
    assert_close(out[:, :5], torch.nn.functional.silu(x[:, :5]) * x[:, width: width + 5])
