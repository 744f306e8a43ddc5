"""Causal paged prefill attention (chunked: a cached prefix, then this chunk) against its torch reference."""

from __future__ import annotations

import pytest
import torch

from llamarun.kernels.prefill_attention import prefill_attention, prefill_attention_reference

# (cached prefix, chunk length) per sequence; the first is a decode row owned by the decode kernel.
CHUNKS = [(30, 1), (0, 37), (5, 20), (70, 3), (0, 1), (0, 0), (16, 16)]


def _packed(chunks: list[tuple[int, int]], device: str) -> tuple[list[int], torch.Tensor]:
    lengths = [p + n if n else 0 for p, n in chunks]
    starts = torch.tensor([0] + [n for _, n in chunks]).cumsum(0).to(torch.int32)  # [B + 1]
    return lengths, starts.to(device)


@pytest.mark.parametrize(("kv_heads", "group", "head_dim", "block_size", "block_m"),
                         [(2, 1, 64, 16, 16), (1, 4, 128, 16, 32), (1, 8, 64, 8, 128), (1, 3, 64, 32, 16)])
def test_prefill_matches_reference(paged_cache, assert_close, device, dtype, kv_heads, group, head_dim, block_size,
                                   block_m):
    lengths, starts = _packed(CHUNKS, device)
    c = paged_cache(lengths, kv_heads, head_dim, block_size, dtype, device, seed=group)
    q = torch.randn(int(starts[-1]), kv_heads * group, head_dim, device=device).to(dtype)
    out = torch.full_like(q, float("nan"))
    scale = head_dim**-0.5
    prefill_attention(q, c.k, c.v, c.block_tables, c.seq_lens, starts, scale, block_size, 37, first_seq=1, out=out,
                      block_m=block_m)
    expected = prefill_attention_reference(q, c.k, c.v, c.block_tables, c.seq_lens, starts, scale, block_size,
                                           first_seq=1)
    assert out[0].isnan().all()  # the decode row is left to the decode kernel
    assert_close(out[1:], expected[1:])


def test_whole_prompt_equals_sdpa_causal(paged_cache, assert_close, device, dtype):
    """No prefix: plain causal attention, checked against torch SDPA rather than our own reference."""
    c = paged_cache([45], 2, 64, 16, dtype, device, seed=9)
    starts = torch.tensor([0, 45], dtype=torch.int32, device=device)
    q = torch.randn(45, 8, 64, device=device).to(dtype)
    out = prefill_attention(q, c.k, c.v, c.block_tables, c.seq_lens, starts, 0.125, 16, 45, block_m=32)
    pos = torch.arange(45, device=device)
    slots = c.block_tables[0, pos // 16].long() * 16 + pos % 16
    keys, values = c.k[:, slots].float(), c.v[:, slots].float()  # [kv_heads, 45, 64]
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(0, 1)[None], keys[None], values[None], is_causal=True, enable_gqa=True)[0]
    assert_close(out, expected.transpose(0, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefill_llama_8b_shapes_bf16(paged_cache):
    chunks = [(0, 512), (1000, 2048), (4096, 300), (0, 1), (7, 129)]
    lengths, starts = _packed(chunks, "cuda")
    c = paged_cache(lengths, 8, 128, 16, torch.bfloat16, "cuda", seed=13)
    q = torch.randn(int(starts[-1]), 32, 128, device="cuda", dtype=torch.bfloat16)
    out = prefill_attention(q, c.k, c.v, c.block_tables, c.seq_lens, starts, 128**-0.5, 16, 2048)
    expected = prefill_attention_reference(q, c.k, c.v, c.block_tables, c.seq_lens, starts, 128**-0.5, 16)
    torch.testing.assert_close(out.float(), expected.float(), atol=1e-2, rtol=1e-2)
