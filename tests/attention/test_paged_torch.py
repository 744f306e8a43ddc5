"""The torch paged attention, built from AttentionMetadata, equals plain causal attention per sequence."""

from __future__ import annotations

import pytest
import torch

from llamarun.attention.paged_torch import PagedAttention, PagedKVCache
from llamarun.config import ModelConfig
from llamarun.engine.batch import model_inputs, pack_step
from llamarun.engine.step import ScheduledSeq, SchedulerOutput

HEADS, KV_HEADS, D, BS = 6, 2, 8, 4


def reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """q [n, heads, d] for the last n positions of a context; keys/values [ctx, kv_heads, d]."""
    n, ctx = q.shape[0], keys.shape[0]
    k = keys.repeat_interleave(HEADS // KV_HEADS, dim=1)  # [ctx, heads, d]
    v = values.repeat_interleave(HEADS // KV_HEADS, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * D**-0.5  # [heads, n, ctx]
    allowed = torch.arange(ctx)[None, :] <= torch.arange(ctx - n, ctx)[:, None]  # [n, ctx]
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", probs, v)  # [n, heads, d]


def test_mixed_batch_equals_reference_and_writes_the_cache():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=16, hidden_size=HEADS * D, intermediate_size=8, num_layers=2,
                         num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=D)
    cache = PagedKVCache(config, num_blocks=16, block_size=BS, dtype=torch.float32, device="cpu")
    cache.k.normal_()
    cache.v.normal_()
    step = SchedulerOutput(seqs=[
        ScheduledSeq("p", [0] * 6, 0, [9, 2], True),  # a whole prompt (causal SDPA path)
        ScheduledSeq("d1", [0], 10, [5, 1, 7], True),  # decodes of different lengths
        ScheduledSeq("c", [0] * 3, 5, [3, 4], False),  # a chunk after 5 cached tokens (masked SDPA path)
        ScheduledSeq("d2", [0], 2, [8], True),
    ])
    batch = pack_step(step, BS)
    tokens = len(batch.token_ids)
    q = torch.randn(tokens, HEADS, D)  # [tokens, heads, d]
    k, v = torch.randn(tokens, KV_HEADS, D), torch.randn(tokens, KV_HEADS, D)
    out = PagedAttention(cache, model_inputs(batch, torch.device("cpu")).attention).forward(1, q, k, v)

    kc, vc = cache.k[1].transpose(0, 1), cache.v[1].transpose(0, 1)  # [slots, kv_heads, d]
    assert torch.equal(kc[batch.slot_mapping], k) and torch.equal(vc[batch.slot_mapping], v)
    for b in range(batch.num_seqs):
        first, last = batch.query_start[b], batch.query_start[b + 1]
        table, ctx = batch.block_tables[b], batch.seq_lens[b]
        slots = [table[p // BS] * BS + p % BS for p in range(ctx)]
        expected = reference(q[first:last], kc[slots], vc[slots])
        torch.testing.assert_close(out[first:last], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cpu_cache_reads_as_zeros_and_takes_writes(dtype):
    """The CPU slabs are mapped pages (no zeroing pass at load): they must read as zeros and behave as tensors."""
    from llamarun.attention.paged_torch import zeroed

    slab = zeroed((2, 3, 64, 8), dtype, "cpu")
    assert slab.dtype == dtype and slab.shape == (2, 3, 64, 8) and slab.is_contiguous()
    assert torch.count_nonzero(slab) == 0
    slab[1, 2, 5] = 1.5
    assert slab.sum().item() == 12.0 and slab[1, 2, 5, 0].item() == 1.5
    assert zeroed((0, 4), dtype, "cpu").shape == (0, 4)
