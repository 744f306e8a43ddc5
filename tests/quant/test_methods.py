"""Each quantization method's packed linear against the reference `x @ dequantize(w).T` (CPU paths)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llamarun.quant.fp8 import Fp8Linear, Fp8Method
from llamarun.quant.int4 import Int4Linear, Int4Method
from llamarun.quant.int8 import Int8Linear, Int8Method
from llamarun.quant.layouts import Int4Weight, dequantize
from llamarun.quant.modes import method_for

METHODS = [Fp8Method(), Int8Method(), Int4Method(128), Int4Method(64)]
# Relative tolerance per method: far below what a wrong layout gives (see the swapped-nibble check).
# INT8 and INT4 on CPUs multiply in bfloat16 (PyTorch's kernels are fast in it), hence their looser bound.
TOLERANCE = {"fp8": 1e-5, "int8": 1e-2, "int4-g128": 1e-2, "int4-g64": 1e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("method", METHODS, ids=str)
@pytest.mark.parametrize("n", [96, 40])  # 40: a shape the CPU int4 kernel refuses (N % 16), so the reference
def test_packed_linear_matches_reference(method, n):
    torch.manual_seed(0)
    weight = torch.randn(n, 256) * 0.05
    layout = method.quantize(weight)
    module = method.create(layout)
    for rows in (1, 7, 70):  # decode, small batch, a prefill chunk (the int8 CPU GEMM path)
        x = torch.randn(rows, 256)
        expected = x @ dequantize(layout).t()  # [rows, N]
        got = module(x)
        assert got.shape == (rows, n) and got.dtype == x.dtype
        assert _rel(got, expected) < TOLERANCE[method.name], (method, rows)
    # 3-D inputs keep their leading dims
    assert module(torch.randn(2, 3, 256)).shape == (2, 3, n)


@pytest.mark.parametrize("method", METHODS, ids=str)
def test_module_gives_back_its_layout_and_size(method):
    weight = torch.randn(64, 128) * 0.1
    layout = method.quantize(weight)
    module = method.create(layout)
    back = module.layout()
    assert type(back) is type(layout)
    for name in layout.__dataclass_fields__:
        a, b = getattr(layout, name), getattr(back, name)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                                                      b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b)
        else:
            assert a == b
    assert module.nbytes() == layout.nbytes() == method.packed_bytes(64, 128, 4)


def test_int4_tolerance_catches_a_wrong_nibble_order():
    torch.manual_seed(0)
    layout = Int4Method(64).quantize(torch.randn(32, 128))
    swapped = Int4Weight(qweight=(layout.qweight >> 4) | (layout.qweight << 4), scales=layout.scales,
                         mins=layout.mins, group_size=64)
    x = torch.randn(4, 128)
    assert _rel(x @ dequantize(swapped).t(), x @ dequantize(layout).t()) > 100 * TOLERANCE["int4-g64"]


def test_int4_cpu_kernel_is_used_where_it_applies():
    # PyTorch's kernel for prompts wants N % 16 == 0; the native GEMM (kernels/cpu), where it built, takes every
    # N and leaves PyTorch's packing unmade.
    fits = Int4Method(128).create(Int4Method(128).quantize(torch.randn(32, 128)))
    assert fits._cpu_kernel != fits._native_gemm
    odd = Int4Method(128).create(Int4Method(128).quantize(torch.randn(40, 128)))
    assert not odd._cpu_kernel


def test_bf16_activations_keep_their_dtype():
    torch.manual_seed(0)
    weight = torch.randn(64, 128, dtype=torch.bfloat16) * 0.05
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    for method in METHODS:
        layout = method.quantize(weight)
        got = method.create(layout)(x)
        assert got.dtype == torch.bfloat16
        assert _rel(got, x.float() @ dequantize(layout).t()) < 2e-2, method


def test_pack_linear_replaces_an_nn_linear():
    linear = nn.Linear(128, 32, bias=False)
    assert isinstance(method_for("fp8").pack_linear(linear), Fp8Linear)
    assert isinstance(method_for("int8").pack_linear(linear), Int8Linear)
    packed = method_for("int4-g64").pack_linear(linear)
    assert isinstance(packed, Int4Linear) and packed.format == "int4-g64"
    with pytest.raises(ValueError, match="bias"):
        method_for("int8").pack_linear(nn.Linear(128, 32))


def test_create_refuses_another_methods_layout():
    with pytest.raises(TypeError, match="Fp8Weight"):
        Fp8Method().create(Int8Method().quantize(torch.randn(8, 16)))


def test_packed_linears_hold_row_major_tensors_whatever_views_arrive():
    """A converter may hand over a transposed view (AWQ's qweight); the GPU kernels read rows, so the module
    keeps a row-major copy (found when `--weights packed` ran on a GPU)."""
    from llamarun.quant.int8 import Int8Method
    from llamarun.quant.layouts import Int8Weight

    q = torch.randint(-127, 128, (64, 48), dtype=torch.int8).t()  # [48, 64] view, column-major
    module = Int8Method().create(Int8Weight(q, torch.rand(48)))
    assert not q.is_contiguous() and module.qweight.is_contiguous()
    assert torch.equal(module.qweight, q)
