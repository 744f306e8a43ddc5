"""The native CPU kernels: C sources shipped in the package, compiled once per machine on first use.

PyTorch's int8 weight-only CPU kernel streams the default model's small matrices at about a third of the
memory bandwidth, and a decode step's attention is a dozen small dispatches per layer: decode is where
llamarun trails llama.cpp most. Each kernel is a plain C file (`gemv_w8a8.c`: AVX2 integer dot products
against int8 weights; `gemv_w4a8.c`: the same against 4-bit affine weights, the activations 16-bit integers
as two int8 planes; `gemm_w4a8.c`: prompt chunks on the same records and activation integers, tiled;
`decode_attention.c`: one query per sequence over the paged cache, the step's own keys and values written first;
`prefill_attention.c`: a prompt chunk's causal attention over the same cache;
`small_ops.c`: add + RMSNorm, rotary and silu(gate) * up; `decode_step.c`: all layers of an all-decode step in
one call, from the same inline pieces in the shared headers), OpenMP inside
where the work is large enough, built in well under a second with the system's C compiler into the llamarun
home, keyed by a hash of the source and flags, and called through ctypes with tensor pointers: no Python
headers, no PyTorch extension.

Where there is no AVX2/FMA, no compiler, or `LLAMARUN_CPU_KERNELS=off`, `load()` returns None and the
callers keep PyTorch's kernels; the reason is logged once. The OpenMP runtime it links (libgomp) is the one
PyTorch already loaded, so `--threads` applies to it too.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger("llamarun.kernels")

ENV = "LLAMARUN_CPU_KERNELS"  # auto (default) | off
HERE = Path(__file__).parent
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
BLOCK = 32  # activation quantization block of gemv_w8a8/w4a8: the input size must be a multiple of it

_lock = threading.Lock()
_loaded: dict[str, Callable | None] = {}


def cpu_has_avx2() -> bool:
    """AVX2 and FMA, read from /proc/cpuinfo (x86-64 Linux; anything else: no)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx2" in flags and "fma" in flags


def load() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """`gemv_w8a8(x [M, K] float32, qweight [N, K] int8, scale [N] float32) -> [M, N] float32`, or None."""
    return _load("gemv_w8a8", _wrap_gemv)


def load_w4a8() -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None:
    """`gemv_w4a8(x [M, K] float32, records [ceil(N / 4), K // 32, 96] uint8, N) -> [M, N] float32` (records
    from `w4a8_layout.to_records`), or None."""
    return _load("gemv_w4a8", _wrap_w4a8)


def load_gemm_w4a8() -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None:
    """`gemm_w4a8(x [M, K] float32, records, N) -> [M, N] float32` for prompt chunks (many rows), on the same
    records and the same activation quantization as `load_w4a8`'s, or None."""
    return _load("gemm_w4a8", _wrap_gemm_w4a8)


def load_decode_attention() -> Callable[..., torch.Tensor] | None:
    """`decode_attention(q [B, H, D], k_slab, v_slab [KVH, S, D], tables [B, W] int32, seq_lens [B] int32,
    block_size, new=None) -> [B, H, D]`, all float32 on the CPU, or None. `new = (k [B, KVH, D], v, slots [B]
    int64)` writes the step's keys and values into the slabs first (k and v: inner [KVH, D] contiguous)."""
    return _load("decode_attention", _wrap_attention)


def load_prefill_attention() -> Callable[..., torch.Tensor] | None:
    """`prefill_attention(q [n, H, D], k_slab, v_slab [KVH, S, D], table [W] int32, ctx, block_size) -> [n, H, D]`:
    causal attention of the last n of a sequence's ctx tokens, whose keys and values the slabs already hold; all
    float32 on the CPU; or None."""
    return _load("prefill_attention", _wrap_prefill_attention)


def load_small_ops() -> tuple[Callable, Callable, Callable] | None:
    """(`add_rms_norm(x, residual | None, weight, eps) -> (norm, total)`, `rotary(x, cos, sin) -> rotated`,
    `silu_mul(gate_up) -> silu(gate) * up`) for float32 CPU tensors, x [tokens, hidden] contiguous / [tokens, heads,
    d] with a contiguous last dim / gate_up [tokens, 2 * inter] contiguous; or None."""
    return _load("small_ops", _wrap_small_ops)


def load_decode_step() -> ctypes.CDLL | None:
    """The library of `decode_step.c` (a whole all-decode step in one call), or None; kernels/cpu/decode_step.py
    holds its plan and checks."""
    return _load("decode_step", _wrap_decode_step)


def _load(name: str, wrap: Callable[[ctypes.CDLL], Callable]) -> Callable | None:
    with _lock:
        if name not in _loaded:
            lib = _library(name)
            _loaded[name] = wrap(lib) if lib is not None else None
        return _loaded[name]


def _library(name: str) -> ctypes.CDLL | None:
    if os.environ.get(ENV, "auto").strip().lower() == "off":
        return None
    if not cpu_has_avx2():
        log.info("native CPU kernels off: this CPU has no AVX2/FMA")
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("native CPU kernels off: no C compiler (cc/gcc) on PATH; PyTorch's kernels run instead")
        return None
    try:
        return ctypes.CDLL(str(_compiled(compiler, HERE / f"{name}.c")))
    except (OSError, subprocess.SubprocessError) as err:
        log.info("native CPU kernels off: building %s failed (%s)", name, str(err).splitlines()[0][:200])
        return None


def _wrap_gemv(lib: ctypes.CDLL) -> Callable:
    fn = lib.gemv_w8a8
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 3 + [ctypes.c_void_p]
    fn.restype = None

    def gemv_w8a8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        m, k = x.shape
        n = qweight.shape[0]
        x = x.contiguous()
        y = torch.empty(m, n, dtype=torch.float32)
        work = torch.empty(m * (k + k // BLOCK * 4), dtype=torch.uint8)  # the quantized rows and their scales
        fn(x.data_ptr(), qweight.data_ptr(), scale.data_ptr(), y.data_ptr(), m, n, k, work.data_ptr())
        return y

    return gemv_w8a8


def _wrap_w4a8(lib: ctypes.CDLL) -> Callable:
    fn = lib.gemv_w4a8
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 3 + [ctypes.c_void_p]
    fn.restype = None

    def gemv_w4a8(x: torch.Tensor, records: torch.Tensor, n: int) -> torch.Tensor:
        m, k = x.shape
        blocks = k // BLOCK
        _check_records("gemv_w4a8", x, records, n)
        x = x.contiguous()
        y = torch.empty(m, n, dtype=torch.float32)
        work = torch.empty(m * (2 * k + 8 * blocks), dtype=torch.uint8)  # two byte planes a row, scales, sums
        fn(x.data_ptr(), records.data_ptr(), y.data_ptr(), m, n, k, work.data_ptr())
        return y

    return gemv_w4a8


def _wrap_gemm_w4a8(lib: ctypes.CDLL) -> Callable:
    fn, work_bytes = lib.gemm_w4a8, lib.gemm_w4a8_work
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 3 + [ctypes.c_void_p]
    fn.restype = ctypes.c_int
    work_bytes.argtypes = [ctypes.c_int] * 2
    work_bytes.restype = ctypes.c_long

    def gemm_w4a8(x: torch.Tensor, records: torch.Tensor, n: int) -> torch.Tensor:
        m, k = x.shape
        _check_records("gemm_w4a8", x, records, n)
        x = x.contiguous()
        y = torch.empty(m, n, dtype=torch.float32)
        work = torch.empty(work_bytes(m, k), dtype=torch.uint8)  # activations re-laid out, scales, sums
        if fn(x.data_ptr(), records.data_ptr(), y.data_ptr(), m, n, k, work.data_ptr()) != 0:
            raise MemoryError("gemm_w4a8: no memory for the widened weight tiles")
        return y

    return gemm_w4a8


def _check_records(name: str, x: torch.Tensor, records: torch.Tensor, n: int) -> None:
    """Records that fit x [M, K] float32 and n output rows, or a ValueError (never a bad read in C)."""
    k = x.shape[1]
    tiles, blocks, tile_bytes = records.shape if records.dim() == 3 else (0, 0, 0)
    if (blocks * BLOCK != k or tile_bytes != 96 or not 0 < n <= 4 * tiles or n <= 4 * (tiles - 1)
            or records.dtype != torch.uint8 or not records.is_contiguous() or x.dtype != torch.float32):
        raise ValueError(f"{name}: records {tuple(records.shape)} {records.dtype} for {n} rows do not fit x "
                         f"{tuple(x.shape)} {x.dtype}")


def _wrap_attention(lib: ctypes.CDLL) -> Callable:
    fn = lib.decode_attention
    fn.argtypes = ([ctypes.c_void_p] * 6 + [ctypes.c_int] * 6 + [ctypes.c_long, ctypes.c_float, ctypes.c_void_p]
                   + [ctypes.c_void_p] * 2 + [ctypes.c_long] * 2 + [ctypes.c_void_p])
    fn.restype = None

    def decode_attention(q: torch.Tensor, k_slab: torch.Tensor, v_slab: torch.Tensor, tables: torch.Tensor,
                         seq_lens: torch.Tensor, block_size: int,
                         new: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        batch, heads, d = q.shape
        kv_heads, slots, _ = k_slab.shape
        width = tables.shape[1]
        q = q.contiguous()
        out = torch.empty_like(q)
        # every split item's scores, then each half's (max, sum) and output (decode_attention.h)
        work = torch.empty(batch * kv_heads * 2 * width * block_size + batch * heads * (4 + 2 * d),
                           dtype=torch.float32)
        k_new = v_new = new_slots = None
        if new is not None:
            k_new, v_new, new_slots = new
            if (k_new.shape != (batch, kv_heads, d) or v_new.shape != k_new.shape or k_new.stride()[1:] != (d, 1)
                    or v_new.stride()[1:] != (d, 1) or new_slots.dtype != torch.int64
                    or new_slots.shape != (batch,) or not new_slots.is_contiguous()):
                raise ValueError(f"decode_attention: new keys {tuple(k_new.shape)}/{k_new.stride()}, values "
                                 f"{tuple(v_new.shape)}/{v_new.stride()} and slots {tuple(new_slots.shape)} "
                                 f"{new_slots.dtype} do not fit {batch} queries of {kv_heads} x {d}")
        fn(q.data_ptr(), k_slab.data_ptr(), v_slab.data_ptr(), tables.data_ptr(), seq_lens.data_ptr(),
           out.data_ptr(), batch, heads, kv_heads, d, block_size, width, slots, d ** -0.5, work.data_ptr(),
           k_new.data_ptr() if new else None, v_new.data_ptr() if new else None,
           k_new.stride(0) if new else 0, v_new.stride(0) if new else 0, new_slots.data_ptr() if new else None)
        return out

    return decode_attention


def _wrap_prefill_attention(lib: ctypes.CDLL) -> Callable:
    fn = lib.prefill_attention
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 6 + [ctypes.c_long, ctypes.c_float]
    fn.restype = ctypes.c_int

    def prefill_attention(q: torch.Tensor, k_slab: torch.Tensor, v_slab: torch.Tensor, table: torch.Tensor,
                          ctx: int, block_size: int) -> torch.Tensor:
        n, heads, d = q.shape
        kv_heads, slots, _ = k_slab.shape
        if (not 0 < n <= ctx or table.dtype != torch.int32 or not table.is_contiguous()
                or table.numel() * block_size < ctx or heads % kv_heads or v_slab.shape != k_slab.shape
                or not k_slab.is_contiguous() or not v_slab.is_contiguous() or k_slab.shape[2] != d):
            raise ValueError(f"prefill_attention: q {tuple(q.shape)}, slabs {tuple(k_slab.shape)}, table "
                             f"{tuple(table.shape)} {table.dtype} do not fit {ctx} tokens in blocks of {block_size}")
        q = q.contiguous()
        out = torch.empty_like(q)
        if fn(q.data_ptr(), k_slab.data_ptr(), v_slab.data_ptr(), table.data_ptr(), out.data_ptr(), n, ctx, heads,
              kv_heads, d, block_size, slots, d ** -0.5) != 0:
            raise MemoryError("prefill_attention: no memory for the scores")
        return out

    return prefill_attention


def _wrap_decode_step(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.decode_step_work.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.decode_step_work.restype = ctypes.c_long
    lib.decode_step.argtypes = ([ctypes.c_void_p] * 3 + [ctypes.c_float] * 2 + [ctypes.c_void_p] * 2
                                + [ctypes.c_long] + [ctypes.c_void_p] * 3 + [ctypes.c_long] + [ctypes.c_void_p] * 3
                                + [ctypes.c_int] + [ctypes.c_void_p] * 3
                                + [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_long])
    lib.decode_step.restype = ctypes.c_int
    return lib


def _wrap_small_ops(lib: ctypes.CDLL) -> tuple[Callable, Callable, Callable]:
    norm_fn, rot_fn, silu_fn = lib.add_rms_norm, lib.rotary, lib.silu_mul
    norm_fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 2 + [ctypes.c_float]
    rot_fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    silu_fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int] * 2
    norm_fn.restype = rot_fn.restype = silu_fn.restype = None

    def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, hidden = x.shape
        total, norm = torch.empty_like(x), torch.empty_like(x)
        norm_fn(x.data_ptr(), residual.data_ptr() if residual is not None else None, weight.data_ptr(),
                total.data_ptr(), norm.data_ptr(), rows, hidden, eps)
        return norm, total

    def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        tokens, heads, d = x.shape
        out = torch.empty(tokens, heads, d, dtype=torch.float32)
        rot_fn(x.data_ptr(), x.stride(0), x.stride(1), cos.data_ptr(), sin.data_ptr(), out.data_ptr(),
               tokens, heads, d)
        return out

    def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
        rows, double = gate_up.shape
        out = torch.empty(rows, double // 2, dtype=torch.float32)
        silu_fn(gate_up.data_ptr(), out.data_ptr(), rows, double // 2)
        return out

    return add_rms_norm, rotary, silu_mul


def _compiled(compiler: str, source: Path) -> Path:
    """The shared library for this source and these flags, built into the llamarun home once."""
    from llamarun.store.home import llamarun_home

    # The shared headers count too: a kernel that includes one must be rebuilt when it changes.
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))
    digest = hashlib.sha256(source.read_bytes() + headers + " ".join(FLAGS).encode()).hexdigest()[:16]
    folder = llamarun_home() / "kernels"
    path = folder / f"{source.stem}-{digest}.so"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    result = subprocess.run([compiler, *FLAGS, "-o", str(tmp), str(source)], capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise subprocess.SubprocessError(result.stderr.strip() or f"{compiler} exited with {result.returncode}")
    os.replace(tmp, path)  # atomic: a concurrent process either sees the whole library or builds its own
    return path
