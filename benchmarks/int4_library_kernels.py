"""The libraries' side of `gpu_int4_libraries.py`: importing each library, and one `Kernel` per library kernel
(its own quantizer, a weight for timing, its matmul, the float weight it should equal)."""

from __future__ import annotations

GROUP = 128
DEVICE = "cuda"  # a CPU smoke test of the checks sets "cpu" here and in gpu_int4_libraries (TRITON_INTERPRET=1)


# ---------------------------------------------------------------------------------------------------- loading


def load(lib: str) -> dict:
    """Import `lib`'s modules and resolve the ops its kernels call; raises on anything missing."""
    import torch

    if lib == "base":
        from gpu_int4_decode import calls_for
        from gpu_quant_kernels import make_kernel, tinygemm_pack

        return {"calls_for": calls_for, "make_kernel": make_kernel, "tinygemm_pack": tinygemm_pack}
    if lib == "torchao":
        import mslk
        import torchao
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        ops = {name: getattr(torch.ops.mslk, name) for name in ("bf16i4bf16_rowwise", "bf16i4bf16_shuffled",
                                                                 "preshuffle_i4")}
        return {"torchao": torchao, "config": Int4WeightOnlyConfig, "quantize_": quantize_, "ops": ops,
                "mslk_version": getattr(mslk, "__version__", None)}
    if lib == "bitsandbytes":
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnbf

        ops = {name: getattr(torch.ops.bitsandbytes, name) for name in ("gemm_4bit", "dequantize_4bit")}
        try:  # which native library it loaded (informational)
            from bitsandbytes import cextension

            native = getattr(getattr(cextension.lib, "_lib", None), "_name", None)
            lib_path = f"{getattr(cextension, 'BNB_BACKEND', '?')}: {native}"
        except Exception as exc:
            lib_path = f"unknown: {exc}"
        return {"bnb": bnb, "F": bnbf, "ops": ops, "native": lib_path}
    if lib == "conch":
        from conch.ops.quantization.gemm import mixed_precision_gemm
        from conch.third_party.vllm.quant_utils import pack_rows, quantize_weights
        from conch.third_party.vllm.scalar_type import scalar_types

        return {"gemm": mixed_precision_gemm, "quantize_weights": quantize_weights, "pack_rows": pack_rows,
                "uint4": scalar_types.uint4}
    raise ValueError(lib)


# ---------------------------------------------------------------------------------------------------- kernels


class Kernel:
    """One library kernel: `quantize(w_bf16)` packs a [N, K] weight with the library's own quantizer;
    `random(n, k)` gives a weight of the same layout for timing (by default `quantize` of a random weight);
    `run(packed, x)` is the matmul."""

    def __init__(self, name: str, mods: dict):
        self.name, self.mods = name, mods

    def quantize(self, w):
        raise NotImplementedError

    def random(self, n: int, k: int, w):
        return self.quantize(w)

    def run(self, packed, x):
        raise NotImplementedError

    def reference(self, packed, w_ref):  # the float32 [N, K] weight this kernel should multiply by
        return w_ref


class TorchaoKernel(Kernel):
    def quantize(self, w):
        import torch

        fmt = self.name.split(".")[1]
        config = self.mods["config"](group_size=GROUP, int4_packing_format=fmt, set_inductor_config=False)
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta", dtype=w.dtype)
        linear.weight = torch.nn.Parameter(w, requires_grad=False)
        self.mods["quantize_"](linear, config)
        return linear

    def run(self, linear, x):
        return linear(x)


class BnbKernel(Kernel):
    def quantize(self, w):
        return self.mods["F"].quantize_4bit(w, blocksize=GROUP, quant_type="nf4", compress_statistics=False)

    def run(self, packed, x):
        return self.mods["bnb"].matmul_4bit(x, packed[0].t(), packed[1])

    def reference(self, packed, w_ref):
        return self.mods["F"].dequantize_4bit(packed[0], packed[1]).float()


class ConchKernel(Kernel):
    """Weights as vLLM's GPTQ-style layout: [K/8, N] int32 words along K, [K/G, N] scales and zero points."""

    def quantize(self, w):
        import torch

        n, k = w.shape
        # float32 in: in bf16 its own rounding of w / scale would move some levels
        _, w_q, w_s, w_zp = self.mods["quantize_weights"](w.float().t().contiguous(), self.mods["uint4"], GROUP,
                                                          zero_points=True)
        packed = self.mods["pack_rows"](w_q, 4, k, n)
        return packed, w_s.to(torch.bfloat16).contiguous(), w_zp.to(torch.bfloat16).contiguous()

    def random(self, n, k, w):  # pack_rows runs in numpy on the host: too slow for 70B shapes; speed is data-blind
        import torch

        words = torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device=DEVICE)
        scales = (torch.rand(k // GROUP, n, device=DEVICE) * 0.01).to(torch.bfloat16)
        zeros = torch.full((k // GROUP, n), 8.0, device=DEVICE, dtype=torch.bfloat16)
        return words, scales, zeros

    def run(self, packed, x):
        return self.mods["gemm"](x, packed[0], packed[1], packed[2], 4, 0, GROUP)


KERNEL_CLASSES = {"torchao.plain": TorchaoKernel, "torchao.preshuffled": TorchaoKernel, "bnb.nf4": BnbKernel,
                  "conch.w4a16": ConchKernel}
