"""The shard plan, without processes: the slices put back together give the whole tensors."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import TinySpec, make_weights, write_hf

from llamarun.errors import LlamarunError
from llamarun.loaders.registry import open_checkpoint
from llamarun.parallel.load import sharded_checkpoint
from llamarun.parallel.plan import ShardPlan


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = TinySpec(vocab_size=258, tie_word_embeddings=True)
    weights, _ = make_weights(spec, seed=3)
    return open_checkpoint(write_hf(spec, weights, tmp_path_factory.mktemp("plan") / "hf"), "hf"), weights


def test_local_config_follows_the_rank_heads(checkpoint):
    ckpt, _ = checkpoint
    local = ShardPlan(ckpt.config, 1, 2).local_config()
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size) == (2, 1, 64)
    assert local.vocab_size == 129 and local.hidden_size == ckpt.config.hidden_size
    replicated = ShardPlan(ckpt.config, 3, 4)
    assert replicated.local_config().num_kv_heads == 1 and replicated.kv_head_start == 1


@pytest.mark.parametrize("world", [2, 4])
def test_slices_reassemble_the_checkpoint(checkpoint, world):
    """Row slices stack back, column slices concatenate back, vocab padding is zeros; KV heads repeat."""
    ckpt, weights = checkpoint
    parts = [dict(sharded_checkpoint(ckpt, ShardPlan(ckpt.config, r, world)).tensors(torch.float32))
             for r in range(world)]
    name = "model.layers.0.self_attn."
    assert torch.equal(torch.cat([p[name + "q_proj.weight"] for p in parts]), weights[name + "q_proj.weight"])
    assert torch.equal(torch.cat([p[name + "o_proj.weight"] for p in parts], 1), weights[name + "o_proj.weight"])
    down = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(torch.cat([p[down] for p in parts], 1), weights[down])
    kv = weights[name + "k_proj.weight"].view(2, 16, 64)  # [kv_heads, head_dim, hidden]
    heads = 4 // world
    for r, p in enumerate(parts):
        # The KV heads a rank keeps are the ones its query heads read (2 query heads per KV head).
        wanted = sorted({h // 2 for h in range(r * heads, (r + 1) * heads)})
        assert torch.equal(p[name + "k_proj.weight"].view(-1, 16, 64), kv[wanted])
    table = torch.cat([p["model.embed_tokens.weight"] for p in parts])  # [padded vocab, hidden]
    assert torch.equal(table[:258], weights["model.embed_tokens.weight"])
    assert not table[258:].any()
    norm = "model.norm.weight"
    assert all(torch.equal(p[norm], weights[norm]) for p in parts)


def test_safetensors_slices_equal_the_generic_path(checkpoint):
    """The HF path reads slices from the file; any other format slices whole tensors: the same bytes."""
    import dataclasses

    ckpt, _ = checkpoint
    plan = ShardPlan(ckpt.config, 1, 4)
    direct = dict(sharded_checkpoint(ckpt, plan).tensors(torch.float32))
    generic = dict(sharded_checkpoint(dataclasses.replace(ckpt, format="other"), plan).tensors(torch.float32))
    assert direct.keys() == generic.keys()
    assert all(torch.equal(direct[k], generic[k]) for k in direct)


def test_a_split_the_heads_do_not_allow_is_refused(checkpoint):
    ckpt, _ = checkpoint
    with pytest.raises(LlamarunError, match="cannot split 4 attention heads"):
        ShardPlan(ckpt.config, 0, 3)
