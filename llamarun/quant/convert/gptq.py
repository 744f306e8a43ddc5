"""GPTQ int4 (AutoGPTQ / GPTQModel / Optimum) -> `Int4Weight`, exactly.

GPTQ stores the weight input-major and packs along K: `qweight` int32 [K / 8, N], value j of word
[r, n] (bits 4j..4j+3) being q[8r + j, n]; `qzeros` int32 [K / G, N / 8] packed along N the same
sequential way; `scales` [K / G, N]; `g_idx` [K], the group of each input.
`w[k, n] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n]`, where the original format ("gptq", v1)
stores z - 1 (a quirk of its packing code kept for compatibility) and "gptq_v2" stores z itself.
With `desc_act` (act-order) the groups are not contiguous along K: `g_idx` is not k // G, and no
contiguous-group layout holds that without permuting the activations too, so it is refused here
(the loader expands such weights instead; `gptq_dequantize` handles any g_idx).
"""

from __future__ import annotations

import torch

from llamarun.errors import UnsupportedError
from llamarun.quant.convert.awq import check_int4_group_shapes
from llamarun.quant.convert.result import Conversion
from llamarun.quant.convert.words import unpack_int32_nibbles
from llamarun.quant.layouts import Int4Weight, pack_nibbles


def _unpacked(qweight: torch.Tensor, qzeros: torch.Tensor, v1_zeros: bool) -> tuple[torch.Tensor, torch.Tensor]:
    q = unpack_int32_nibbles(qweight.t().contiguous()).t()  # [K, N]: words run along K
    zeros = unpack_int32_nibbles(qzeros).to(torch.int16)  # [K / G, N]
    if v1_zeros:
        # v1 stores z - 1 in 4 bits; runtimes add 1 back without wrapping, so a stored 15 means 16
        zeros = zeros + 1
    return q, zeros


def has_act_order(g_idx: torch.Tensor | None, group_size: int) -> bool:
    """True when g_idx is not the trivial k // G, i.e. groups are scattered along K."""
    if g_idx is None:
        return False
    trivial = torch.arange(g_idx.numel(), device=g_idx.device) // group_size
    return not torch.equal(g_idx.to(torch.int64), trivial)


def gptq_to_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None,
                 group_size: int, v1_zeros: bool = True) -> Conversion:
    """GPTQ tensors of one linear -> Int4Weight [N, K]; act-order (a non-trivial g_idx) is refused."""
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    check_int4_group_shapes("GPTQ", k, n, group_size, {"scales": (scales, (k // group_size, n)),
                                                       "qzeros": (qzeros, (k // group_size, n // 8))})
    if has_act_order(g_idx, group_size):
        raise UnsupportedError(
            "GPTQ act-order (desc_act) weights have groups scattered along the input, which the int4 layout "
            "cannot hold without reordering activations",
            "use a checkpoint quantized with desc_act=false, or load it expanded (--weights exact)")
    q, zeros = _unpacked(qweight, qzeros, v1_zeros)
    s = scales.float()  # [K / G, N]
    weight = Int4Weight(pack_nibbles(q.t()), s.t().contiguous(), (-zeros.float() * s).t().contiguous(),
                        group_size=group_size)
    return Conversion(weight, f"GPTQ int4 g{group_size}")


def gptq_dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None,
                    group_size: int, v1_zeros: bool = True) -> torch.Tensor:
    """The float32 weight [N, K] for any g_idx (act-order included): the expanded path's loader."""
    k = qweight.shape[0] * 8
    q, zeros = _unpacked(qweight, qzeros, v1_zeros)
    groups = g_idx.long() if g_idx is not None else torch.arange(k) // group_size  # [K]
    w = (q.float() - zeros.float()[groups]) * scales.float()[groups]  # [K, N]
    return w.t().contiguous()
