"""In-place rotary of q and k against layers/rotary.py, on views of a merged qkv output."""

from __future__ import annotations

import pytest
import torch

from llamarun.config import ModelConfig
from llamarun.kernels.rotary import apply_rotary_
from llamarun.layers.rotary import RotaryEmbedding, apply_rotary


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(9, 3, 64), (8, 1, 128)])
def test_rotary_in_place_matches_reference(assert_close, device, dtype, heads, kv_heads, head_dim):
    config = ModelConfig(vocab_size=8, hidden_size=heads * head_dim, intermediate_size=8, num_layers=1,
                         num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, rope_theta=500000.0)
    positions = torch.tensor([0, 1, 7, 300, 4095], device=device)
    cos, sin = RotaryEmbedding(config).to(device)(positions, dtype)  # [tokens, head_dim]
    n = len(positions)
    qkv = torch.randn(n, (heads + 2 * kv_heads) * head_dim).to(dtype).to(device)
    before = qkv.clone()
    q = qkv[:, : heads * head_dim].view(n, heads, head_dim)
    k = qkv[:, heads * head_dim: (heads + kv_heads) * head_dim].view(n, kv_heads, head_dim)
    expected_q, expected_k = apply_rotary(q.clone(), cos, sin), apply_rotary(k.clone(), cos, sin)
    apply_rotary_(q, k, cos, sin)
    assert_close(q, expected_q)
    assert_close(k, expected_k)
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim:], before[:, (heads + kv_heads) * head_dim:])  # v
    assert torch.equal(q[0], before[0, : heads * head_dim].view(heads, head_dim))  # position 0 is the identity
