"""Stage plans, the rank layout and per-rank memory plans, without processes."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import TinySpec, make_weights, write_hf

from llamarun.config import ModelConfig
from llamarun.engine.step import ScheduledSeq
from llamarun.errors import DoesNotFitError, LlamarunError
from llamarun.loaders.registry import open_checkpoint
from llamarun.parallel.layout import PP_ENV, Layout, parallel_layout
from llamarun.parallel.plan import ShardPlan
from llamarun.parallel.rank_memory import check_rank_fits, rank_config, rank_weight_bytes
from llamarun.parallel.settings import TP_ENV
from llamarun.parallel.stage_model import stage_checkpoint
from llamarun.parallel.stage_plan import StagePlan
from llamarun.parallel.stage_runner import micro_batches


def config(layers: int, tied: bool = False) -> ModelConfig:
    return ModelConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_layers=layers, num_heads=4,
                       num_kv_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=tied)


@pytest.mark.parametrize(("layers", "stages", "sizes"), [(3, 2, [2, 1]), (80, 3, [27, 27, 26]), (4, 4, [1] * 4)])
def test_layer_ranges_are_contiguous_balanced_and_cover_the_model(layers, stages, sizes):
    plans = [StagePlan(config(layers), s, stages) for s in range(stages)]
    assert [len(p.layers) for p in plans] == sizes
    assert [i for p in plans for i in p.layers] == list(range(layers))


def test_more_stages_than_layers_is_refused():
    with pytest.raises(LlamarunError, match="--pp 3 asks for more stages than the model's 2 layers"):
        StagePlan(config(2), 0, 3)


def test_names_stages_read_and_placeholders():
    first, last = StagePlan(config(3), 0, 2), StagePlan(config(3), 1, 2)
    assert first.local_name("model.layers.1.mlp.down_proj.weight") == "model.layers.1.mlp.down_proj.weight"
    assert first.local_name("model.layers.2.mlp.down_proj.weight") is None
    assert last.local_name("model.layers.2.self_attn.q_proj.weight") == "model.layers.0.self_attn.q_proj.weight"
    assert first.local_name("lm_head.weight") is None and last.local_name("lm_head.weight") == "lm_head.weight"
    assert last.local_name("model.embed_tokens.weight") is None
    assert first.placeholders() == ["model.norm.weight", "lm_head.weight"]
    assert last.placeholders() == ["model.embed_tokens.weight"]
    tied_last = StagePlan(config(3, tied=True), 1, 2)  # its head is the embedding table
    assert tied_last.local_name("model.embed_tokens.weight") and tied_last.placeholders() == []


def test_stage_view_reads_only_its_tensors_renamed_and_sliced(tmp_path):
    spec = TinySpec(num_layers=3)
    weights, _ = make_weights(spec, seed=4)
    ckpt = open_checkpoint(write_hf(spec, weights, tmp_path / "hf"), "hf")
    stage, shard = StagePlan(ckpt.config, 1, 2), ShardPlan(ckpt.config, 1, 2)
    view = stage_checkpoint(ckpt, stage, shard, torch.device("cpu"))
    assert view.config.num_layers == 1 and view.config.num_heads == 2
    got = dict(view.tensors(torch.float32))
    assert not any(name.startswith("model.layers.1") for name in got)
    q = weights["model.layers.2.self_attn.q_proj.weight"]  # [heads * head_dim, hidden]
    assert torch.equal(got["model.layers.0.self_attn.q_proj.weight"], q[32:])  # tp rank 1: heads 2-3
    assert torch.equal(got["lm_head.weight"], weights["lm_head.weight"][130:])
    stand_in = got["model.embed_tokens.weight"]
    assert stand_in.shape == (130, 64) and stand_in.stride() == (0, 0)  # costs one element


def test_layout_numbers_ranks_stage_major(monkeypatch):
    layout = Layout(tp=2, pp=2)
    assert [(layout.stage_of(r), layout.tp_rank_of(r)) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert layout.describe(3) == "rank 3 (stage 1, tp rank 1)"
    monkeypatch.delenv(TP_ENV, raising=False)
    monkeypatch.setenv(PP_ENV, "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parallel_layout() == Layout(tp=2, pp=2)  # torchrun: tp = world / pp
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(LlamarunError, match="3 ranks, which --pp 2 stages cannot share"):
        parallel_layout()


def test_each_rank_plans_its_own_share():
    whole = config(80)
    layout = Layout(tp=2, pp=2)
    assert rank_config(whole, layout, 3).num_layers == 40 and rank_config(whole, layout, 3).num_kv_heads == 1
    first, last = (rank_weight_bytes(whole, layout, r, "exact", 4) for r in (0, 2))
    table = 500 * 64 * 4  # a tp rank's half of the vocabulary
    assert first - last == 0 and first > table  # the embedding on stage 0, the head on stage 1: same size
    middle = rank_weight_bytes(whole, Layout(tp=2, pp=3), 2, "exact", 4)  # stage 1 of 3: neither
    assert middle < first - table


def test_a_rank_whose_share_does_not_fit_is_named():
    with pytest.raises(DoesNotFitError, match=r"rank 2 \(stage 1, tp rank 0\) of 4: its shard needs"):
        check_rank_fits(config(8), Layout(tp=2, pp=2), 2, mode="exact", element=4, kv_tokens=4096, device="cpu",
                        available_bytes=1_000_000)
    plan = check_rank_fits(config(8), Layout(tp=2, pp=2), 2, mode="exact", element=4, kv_tokens=4096,
                           device="cpu", available_bytes=10**12)
    assert plan.kv_cache_bytes == 2 * 4 * 1 * 16 * 4 * 4096  # K and V, 4 layers, 1 KV head, head_dim 16, fp32


@pytest.mark.parametrize(("tokens", "parts", "groups"), [
    ([1, 1, 1, 60], 2, [[1, 1, 1], [60]]), ([60, 1, 1, 1], 2, [[60], [1, 1, 1]]), ([1] * 4, 2, [[1, 1], [1, 1]]),
    ([5], 3, [[5]]), ([1] * 6, 3, [[1, 1], [1, 1], [1, 1]]), ([10, 10, 10], 1, [[10, 10, 10]])])
def test_micro_batches_keep_order_and_split_tokens_evenly(tokens, parts, groups):
    seqs = [ScheduledSeq(f"r{i}", [7] * n, 0, [0], True) for i, n in enumerate(tokens)]
    got = micro_batches(seqs, parts)
    assert [s for g in got for s in g] == seqs  # every sequence once, in scheduling order
    assert [[s.num_tokens for s in g] for g in got] == groups


def test_a_head_held_apart_is_planned_on_the_last_stage_only():
    whole, layout = config(8), Layout(tp=2, pp=2)
    for rank in (0, 2):  # stage 0 holds no head: the suffix changes nothing there
        same = rank_weight_bytes(whole, layout, rank, "int8", 4)
        exact = rank_weight_bytes(whole, layout, rank, "int8+head-exact", 4)
        head = 500 * 64  # a tp rank's half of the vocabulary x hidden 64
        if rank == 0:
            assert exact == same
        else:  # float32 head instead of int8 (one byte a weight and a float32 scale per row)
            assert exact - same == head * 4 - (head + 500 * 4)
