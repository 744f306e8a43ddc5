"""The native all-decode CPU step (kernels/cpu/decode_step.c via engine/cpu_decode.py) against the per-op path."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import TinySpec, make_weights, write_hf

from llamarun.attention.backend import use_backend
from llamarun.attention.paged_torch import PagedAttention, PagedKVCache
from llamarun.engine import cpu_decode
from llamarun.engine.batch import HostBatch, model_inputs
from llamarun.engine.cpu_decode import DecodeStep
from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.kernels.cpu import build
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.quant.int4 import Int4Method
from llamarun.quant.int8 import Int8Linear, Int8Method
from llamarun.sampling.params import SamplingParams

needs_native = pytest.mark.skipif(build.load_decode_step() is None or build.load_w4a8() is None,
                                  reason="no AVX2/FMA or no C compiler here")
# head_dim 32: the smallest the native step takes (whole blocks of 32 per head)
SPEC = TinySpec(hidden_size=128, intermediate_size=192, num_heads=4, num_kv_heads=2, num_layers=2, llama3_rope=True)
BLOCK_SIZE = 4


def _int8_head(linear: torch.nn.Linear) -> torch.nn.Module:
    """Int4 decoder linears and an int8 head, as the default model runs (its tied head packed as int8)."""
    method = Int8Method() if linear.out_features == SPEC.vocab_size else Int4Method(32)
    return method.pack_linear(linear)


@pytest.fixture(scope="module", params=["int4-head", "int8-head"])
def model(request, tmp_path_factory):
    """The tiny model with int4 linears; its head int4 (run by the model after the native call) or int8 (run
    inside the call)."""
    weights, _ = make_weights(SPEC, seed=5)
    ckpt = open_checkpoint(write_hf(SPEC, weights, tmp_path_factory.mktemp("step") / "hf"), "hf")
    return build_model(ckpt, pack=Int4Method(32).pack_linear if request.param == "int4-head" else _int8_head)


def _batch(seqs: list[tuple[list[int], int, list[int]]]) -> HostBatch:
    """(tokens, start, block table) per sequence, every sequence sampling its last token, packed decodes first as
    engine/batch.py packs them (a one-token prompt is a decode: attention takes rows [0, num_decodes) as one query
    each, and a longer sequence among them would leave its other rows unwritten)."""
    seqs = sorted(seqs, key=lambda seq: len(seq[0]) != 1)  # stable: decodes first, each group in order
    batch = HostBatch([], [], [], [0], [], [], sum(len(t) == 1 for t, _, _ in seqs), [], [])
    for i, (tokens, start, table) in enumerate(seqs):
        positions = list(range(start, start + len(tokens)))
        batch.token_ids += tokens
        batch.positions += positions
        batch.slot_mapping += [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in positions]
        batch.query_start.append(len(batch.token_ids))
        batch.seq_lens.append(start + len(tokens))
        batch.block_tables.append(table)
        batch.logits_rows.append(len(batch.token_ids) - 1)
        batch.sample_ids.append(f"s{i}")
    return batch


def _per_op(model, cache: PagedKVCache, batch: HostBatch) -> torch.Tensor:
    inputs = model_inputs(batch, torch.device("cpu"))
    with torch.inference_mode(), use_backend(PagedAttention(cache, inputs.attention)):
        return model(inputs.input_ids, inputs.positions, inputs.logits_rows)


def _prefilled(model, prompts: list[list[int]], tables: list[list[int]]) -> PagedKVCache:
    cache = PagedKVCache(model.config, num_blocks=32, block_size=BLOCK_SIZE, dtype=torch.float32, device="cpu")
    _per_op(model, cache, _batch([(p, 0, t) for p, t in zip(prompts, tables, strict=True)]))
    return cache


def _copy(cache: PagedKVCache) -> PagedKVCache:
    other = object.__new__(PagedKVCache)  # the same blocks, its own slabs
    other.k, other.v = cache.k.clone(), cache.v.clone()
    other.num_blocks, other.block_size = cache.num_blocks, cache.block_size
    return other


# Prompts of 4 (the decode opens a new block), 7 (the last slot of a block) and 1 token; blocks out of order.
PROMPTS = [[3, 14, 15, 92], [65, 35, 89, 79, 32, 38, 46], [7]]
TABLES = [[5, 9, 2, 11], [0, 1, 17, 3], [30, 8, 4, 6]]


@needs_native
@pytest.mark.parametrize("rows", [1, 3])
def test_native_step_equals_the_per_op_path_step_after_step(model, rows):
    prompts, tables = PROMPTS[:rows], TABLES[:rows]
    ref_cache = _prefilled(model, prompts, tables)
    cache = _copy(ref_cache)
    step = DecodeStep.for_model(model, cache)
    assert step is not None and (step.logits is not None) == (type(model.lm_head) is Int8Linear)
    last = [p[-1] for p in prompts]
    lens = [len(p) for p in prompts]
    for _ in range(6):  # across block boundaries: every row opens a new block within these steps
        batch = _batch([([tok], n, t) for tok, n, t in zip(last, lens, tables, strict=True)])
        want = _per_op(model, ref_cache, batch)  # [rows, vocab]
        assert step.takes(batch)
        with torch.inference_mode():
            got = step(batch)
        assert got.shape == want.shape and got.dtype == torch.float32
        # The same arithmetic in the same order (shared headers, the same rotary table): bit-equal with gcc 12 here;
        # the tolerance leaves a compiler room to contract differently.
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
        torch.testing.assert_close(cache.k, ref_cache.k, rtol=1e-5, atol=1e-5)  # the same keys and values stored
        torch.testing.assert_close(cache.v, ref_cache.v, rtol=1e-5, atol=1e-5)
        last = want.argmax(-1).tolist()
        lens = [n + 1 for n in lens]


@needs_native
def test_steps_it_does_not_take(model):
    cache = _prefilled(model, PROMPTS, TABLES)
    step = DecodeStep.for_model(model, cache)
    prompt = _batch([([1, 2], 0, [12])])
    mixed = _batch([([5], 4, TABLES[0]), ([1, 2], 0, [12])])
    many = _batch([([5], 1, [20 + i]) for i in range(9)])
    assert not step.takes(prompt) and not step.takes(mixed) and not step.takes(many)
    assert step.takes(_batch([([5], 1, [20 + i]) for i in range(8)]))


@needs_native
@pytest.mark.parametrize("what", ["block", "length", "token", "slot", "position"])
def test_bad_indices_are_refused_not_written(model, what):
    cache = _prefilled(model, PROMPTS, TABLES)
    step = DecodeStep.for_model(model, cache)
    before = (cache.k.clone(), cache.v.clone())
    batch = _batch([([5], 4, [1, 99] if what == "block" else [1, 2])])  # block 99: past the cache's 32
    if what == "length":
        batch.seq_lens = [9]  # past the 2 blocks of 4 its table holds
    elif what == "token":
        batch.token_ids = [SPEC.vocab_size]
    elif what == "slot":
        batch.slot_mapping = [32 * BLOCK_SIZE]
    elif what == "position":
        batch.positions = [10**9]  # no table that large is made
    with pytest.raises(ValueError, match="outside the table or cache"), torch.inference_mode():
        step(batch)
    assert torch.equal(cache.k, before[0]) and torch.equal(cache.v, before[1])


def test_models_it_does_not_take_fall_back(model, monkeypatch, tmp_path):
    cache = PagedKVCache(model.config, num_blocks=4, block_size=BLOCK_SIZE, dtype=torch.float32, device="cpu")
    monkeypatch.setenv(cpu_decode.ENV, "off")
    assert DecodeStep.for_model(model, cache) is None
    monkeypatch.delenv(cpu_decode.ENV)
    weights, _ = make_weights(SPEC, seed=5)
    plain = build_model(open_checkpoint(write_hf(SPEC, weights, tmp_path / "hf"), "hf"))  # float32 linears
    assert DecodeStep.for_model(plain, cache) is None
    narrow = PagedKVCache(model.config, num_blocks=4, block_size=BLOCK_SIZE, dtype=torch.bfloat16, device="cpu")
    assert DecodeStep.for_model(model, narrow) is None


def _engine_tokens(model, prompts: list[list[int]], at_once: bool = False) -> dict[str, list[int]]:
    """Greedy tokens per request from an engine: one arrival a step (decode batches of 1..4 rows), or all at once
    with different lengths (batches shrinking from len(prompts) rows as requests finish)."""
    config = EngineConfig(context_length=64, kv_tokens=1024, block_size=BLOCK_SIZE)
    engine = LLMEngine(model, config, dtype=torch.float32, device="cpu")
    out: dict[str, list[int]] = {}
    for step_no in range(200):
        if at_once:
            arrivals = list(range(len(prompts))) if step_no == 0 else []
        else:
            arrivals = [step_no] if step_no < len(prompts) else []
        for i in arrivals:
            out[f"r{i}"] = []
            engine.add_request(prompts[i], SamplingParams.greedy(max_tokens=4 + i if at_once else 9),
                               request_id=f"r{i}")
        if not arrivals and not engine.has_unfinished:
            break
        for o in engine.step():
            out[o.request_id].extend(t.token_id for t in o.new_tokens)
    return out


@needs_native
def test_engine_tokens_equal_with_the_native_step_on_and_off(model, monkeypatch):
    calls = {"n": 0}
    original = DecodeStep.__call__

    def counted(self, inputs):
        calls["n"] += 1
        return original(self, inputs)

    monkeypatch.setattr(DecodeStep, "__call__", counted)
    prompts = [PROMPTS[1], PROMPTS[0], list(range(40, 50)), PROMPTS[2]]
    native = _engine_tokens(model, prompts)
    assert calls["n"] > 0  # the lone and batched decode steps ran natively; prompt steps did not
    used = calls["n"]
    monkeypatch.setenv(cpu_decode.ENV, "off")
    per_op = _engine_tokens(model, prompts)
    assert calls["n"] == used  # off: never called
    assert native == per_op and all(len(t) == 9 for t in native.values())


@needs_native
def test_batches_over_eight_rows_take_the_per_op_path_with_the_same_tokens(model, monkeypatch):
    rows_run = []
    original = DecodeStep.__call__

    def counted(self, batch):
        rows_run.append(len(batch.token_ids))
        return original(self, batch)

    monkeypatch.setattr(DecodeStep, "__call__", counted)
    prompts = [[3 + i, 14, 15 + i] for i in range(11)]  # 11 decodes a step at first, then 10, 9, ... as they end
    native = _engine_tokens(model, prompts, at_once=True)
    assert rows_run and max(rows_run) == 8 and 1 in rows_run  # 11..9 rows ran per op, 8..1 natively
    monkeypatch.setenv(cpu_decode.ENV, "off")
    assert native == _engine_tokens(model, prompts, at_once=True)

