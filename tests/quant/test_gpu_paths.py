"""The CUDA paths of the methods: FP8 `_scaled_mm`, INT8 `_int_mm`, the Triton kernels, 8B random weights in INT4.

Marked `gpu`; skipped without CUDA (and FP8 without compute capability 8.9).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from llamarun.quant.fp8 import GEMV_MAX_ROWS, Fp8Method, fp8_capable
from llamarun.quant.int4 import Int4Method
from llamarun.quant.int8 import INT_MM_MIN_ROWS, Int8Method
from llamarun.quant.layouts import dequantize

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _case(rows: int, n: int = 4096, k: int = 4096):
    gen = torch.Generator(device="cuda").manual_seed(0)
    weight = torch.randn(n, k, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.02
    x = torch.randn(rows, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    return weight, x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.skipif(not torch.cuda.is_available() or not fp8_capable("cuda"), reason="needs FP8 tensor cores")
@pytest.mark.parametrize("rows", [GEMV_MAX_ROWS + 1, 256])
def test_fp8_scaled_mm_matches_the_reference(rows):
    weight, x = _case(rows)
    layout = Fp8Method().quantize(weight)
    module = Fp8Method().create(layout)
    assert module._gemm
    got = module(x)
    expected = x.float() @ dequantize(layout).t()  # [rows, N]
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    # Per-token FP8 activations (3 mantissa bits) cost about 2-3% relative; a wrong scale costs 100%+.
    assert _rel(got, expected) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="row-wise _scaled_mm needs Hopper")
@pytest.mark.parametrize("rows", [GEMV_MAX_ROWS + 1, 300])
def test_fp8_down_projection_quantizes_swiglu_in_one_kernel(rows, monkeypatch):
    from llamarun.kernels import activation

    weight, _ = _case(rows, n=1024, k=4096)
    gate_up = torch.randn(rows, 2 * 4096, device="cuda", dtype=torch.bfloat16) * 2
    module = Fp8Method().create(Fp8Method().quantize(weight))
    two_steps = module(activation.silu_and_mul(gate_up))  # what ran before: SwiGLU, then quantize + GEMM
    monkeypatch.setattr(activation, "silu_and_mul", lambda *a, **k: pytest.fail("a separate SwiGLU kernel ran"))
    fused = module.forward_silu_input(gate_up)
    assert fused.shape == (rows, 1024) and fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused, two_steps, rtol=0, atol=0)  # the same FP8 activations, the same GEMM


@pytest.mark.parametrize("rows", [INT_MM_MIN_ROWS, 256])
def test_int8_int_mm_matches_the_reference(rows):
    weight, x = _case(rows)
    layout = Int8Method().quantize(weight)
    got = Int8Method().create(layout)(x)
    assert _rel(got, x.float() @ dequantize(layout).t()) < 0.02  # per-token int8 activations


@pytest.mark.parametrize("rows", [1, 4, INT_MM_MIN_ROWS - 1])
def test_int8_weight_only_for_decode_batches(rows):
    weight, x = _case(rows)
    layout = Int8Method().quantize(weight)
    assert _rel(Int8Method().create(layout)(x), x.float() @ dequantize(layout).t()) < 0.01


@pytest.mark.skipif(importlib.util.find_spec("llamarun.kernels.int4_matmul") is None, reason="no int4 kernel yet")
@pytest.mark.parametrize("rows", [1, 8, 128])
def test_int4_kernel_path_matches_the_reference(rows):
    weight, x = _case(rows)
    layout = Int4Method(128).quantize(weight)
    assert _rel(Int4Method(128).create(layout)(x), x.float() @ dequantize(layout).t()) < 0.01


@pytest.mark.skipif(not torch.cuda.is_available() or not fp8_capable("cuda")
                    or importlib.util.find_spec("llamarun.kernels.fp8_matmul") is None, reason="no fp8 GEMV")
@pytest.mark.parametrize("rows", [1, GEMV_MAX_ROWS])
def test_fp8_gemv_path_matches_the_reference(rows):
    weight, x = _case(rows)
    layout = Fp8Method().quantize(weight)
    assert _rel(Fp8Method().create(layout)(x), x.float() @ dequantize(layout).t()) < 0.01


@pytest.mark.skipif(importlib.util.find_spec("llamarun.kernels.int4_matmul") is None, reason="no int4 kernel yet")
def test_random_8b_in_int4_never_holds_the_bf16_model():
    from llamarun.bench.random_weights import PRESETS, build_random_model
    from llamarun.quant.modes import weight_bytes

    config = PRESETS["llama3.1-8b"]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    model = build_random_model(config, device="cuda", dtype=torch.bfloat16, method=Int4Method(128))
    peak = torch.cuda.max_memory_allocated() - base
    held = torch.cuda.memory_allocated() - base
    assert held == pytest.approx(weight_bytes(config, "int4-g128", 2), rel=0.01)
    # One float linear (the 2 x 14336 x 4096 gate/up, or the head) and its float32 copy on top of the packed model.
    assert peak < held + 3 * 2 * config.vocab_size * config.hidden_size * 2
    assert peak < config.num_parameters * 2 / 2  # far below the 16 GB of bf16 weights
    del model


@pytest.mark.parametrize("rows", [1, 4])
def test_an_int4_linear_fed_by_its_norm_uses_the_planes_the_norm_wrote(rows, monkeypatch):
    """The norm that feeds an INT4 linear writes its activation planes; the linear then makes none itself, and
    its output equals the two-kernel path's. Planes given for another tensor are never used."""
    from llamarun.kernels import int4_gemv
    from llamarun.layers.norm import RMSNorm

    gen = torch.Generator(device="cuda").manual_seed(1)
    linear = Int4Method(128).create(Int4Method(128).quantize(
        torch.randn(384, 512, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.02))
    norm = RMSNorm(512, 1e-5).to("cuda", torch.bfloat16)
    x = torch.randn(rows, 512, device="cuda", generator=gen, dtype=torch.bfloat16)
    residual = torch.randn(rows, 512, device="cuda", generator=gen, dtype=torch.bfloat16)
    h_plain, sum_plain = norm(x.clone(), residual.clone())  # no consumer: the plain norm
    expected = linear(h_plain)
    planes_launches = []
    original = int4_gemv.activation_planes
    monkeypatch.setattr(int4_gemv, "activation_planes",
                        lambda *a, **k: planes_launches.append(1) or original(*a, **k))
    h, summed = norm(x.clone(), residual.clone(), feeds=linear)
    given = linear._given_planes
    assert given is not None and given[0] is h
    assert torch.equal(summed, sum_plain)
    torch.testing.assert_close(h, h_plain, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(linear(h), expected, atol=2e-2, rtol=2e-2)
    assert planes_launches == [] and linear._given_planes is None  # the norm's planes were used, once
    linear.give_planes(h, given[1])  # planes of h, then another tensor comes: it makes its own
    twice = linear(h * 2)
    assert len(planes_launches) == 1 and linear._given_planes is None
    torch.testing.assert_close(twice, 2 * expected, atol=4e-2, rtol=2e-2)


def test_int4_decode_with_attention_fusions_generates_what_the_plain_launches_do(monkeypatch):
    """On all-decode steps the decode kernel rotates q and k and its merge writes the INT4 o_proj's planes
    (attention/paged_triton.py): greedy generation is unchanged, and o_proj no longer makes planes itself."""
    from llamarun.attention.paged_triton import TritonPagedAttention
    from llamarun.bench.random_weights import PRESETS, load_random_model
    from llamarun.kernels import int4_gemv
    from llamarun.sampling.params import SamplingParams

    monkeypatch.setitem(PRESETS, "head128", PRESETS["tiny"].replace(
        hidden_size=512, intermediate_size=1024, num_heads=4, num_kv_heads=2, head_dim=128, vocab_size=1024))
    original = int4_gemv.activation_planes
    launches = []
    monkeypatch.setattr(int4_gemv, "activation_planes", lambda *a, **k: launches.append(1) or original(*a, **k))

    def generate(fuse: bool) -> tuple[list[int], int]:
        monkeypatch.setattr(TritonPagedAttention, "fuse", fuse)
        launches.clear()
        rm = load_random_model("head128", device="cuda", concurrency=1, context_length=256, seed=3,
                               dtype=torch.bfloat16, weights="int4-g128")
        rm.engine.add_request(list(range(5, 205)), SamplingParams.greedy(max_tokens=24), request_id="r")
        tokens = []
        while rm.engine.has_unfinished:
            tokens += [t.token_id for o in rm.engine.step() for t in o.new_tokens]
        return tokens, len(launches)

    plain, plain_launches = generate(False)
    fused, fused_launches = generate(True)
    assert len(plain) == 24 and fused == plain
    assert fused_launches < plain_launches  # o_proj's planes came from the merge kernel


@pytest.mark.parametrize(("n", "k"), [(1024, 256), (512, 512), (256, 1024)])  # gate/up, q/k/v or o, down
def test_planes_are_offered_exactly_for_the_rows_that_take_the_gemv(n, k, monkeypatch):
    from llamarun.kernels import int4_matmul as module

    linear = Int4Method(64).create(Int4Method(64).quantize(torch.randn(n, k, device="cuda") * 0.02))
    took = []
    gemv = module.gemv_int4_planes
    monkeypatch.setattr(module, "gemv_int4_planes", lambda *a, **kw: took.append(True) or gemv(*a, **kw))
    for rows in range(1, 10):
        took.clear()
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        offered = linear.planes_group(x) is not None  # the norm or attention's merge would write planes for it
        linear(x)
        assert offered == bool(took), (rows, offered, took)
