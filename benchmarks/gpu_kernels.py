"""GPU kernel benchmark at Llama 3.1 8B shapes (32 q heads, 8 KV heads, head_dim 128, bf16, 16-token pages).

Checks every kernel against its torch reference on the GPU, then times it with triton.testing.do_bench
(median, L2 flushed between runs) two ways: replays of a CUDA graph of several calls (the GPU's own
time, cycling through layers so a short context is not read from L2; decode runs graphed in serving)
and one eager call (what an ungraphed step pays, Python launch overhead included).

Compared: decode attention (ours, the torch PagedAttention backend, FlexAttention on a contiguous copy
of the same K/V, FlashInfer's paged decode if `import flashinfer` works), prefill attention (ours,
torch, SDPA and FlexAttention on contiguous K/V, FlashInfer), and the fused norm / rotary / activation /
KV-store kernels against torch eager. Decode reports achieved GB/s (K+V bytes read / graph time),
prefill TFLOP/s (causal), the small kernels GB/s (bytes read + written).

    python benchmarks/gpu_kernels.py [--skip-flex] [--smoke]

Prints a table last and writes $OUT/kernels.json when OUT is set. Exits 1 if any check fails. Tuning
variants of the attention kernels live in gpu_kernels_sweep.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llamarun.attention.metadata import AttentionMetadata
from llamarun.attention.paged_torch import PagedAttention, PagedKVCache
from llamarun.config import ModelConfig

HEADS, KV_HEADS, HEAD_DIM, PAGE, HIDDEN, INTER = 32, 8, 128, 16, 4096, 14336
DTYPE = torch.bfloat16
DEVICE = "cuda"  # --smoke runs the script itself on the CPU through Triton's interpreter
SCALE = HEAD_DIM**-0.5
DECODE_CASES = [(1, 512), (1, 4096), (1, 32768), (64, 1024)]  # (batch, context)
PREFILL_CASES = [(1, 512, 0), (4, 2048, 0), (4, 2048, 2048)]  # (sequences, chunk, cached prefix)
SMALL_TOKENS = (64, 4096)  # decode-batch and prefill-chunk rows for the elementwise kernels
ROWS: list[dict] = []
FAILURES: list[str] = []


def bench(fn: Callable[[], object]) -> float:
    """Median ms of fn (do_bench flushes the L2 before each run); one timed call in a smoke run."""
    import triton.testing

    if DEVICE == "cpu":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def graph_ms(fn: Callable[[int], object], layers: int) -> float:
    """GPU ms per call: max(layers, 8) calls, cycling through the layers, captured in one CUDA graph and replayed.

    Decode runs under CUDA graphs in serving, so this is its real cost; a single eager call of a small
    kernel mostly measures Python launch overhead. Cycling layers keeps a small context from being
    served out of L2, as a 32-layer step would not be.
    """
    calls = max(layers, 8)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles, allocator pools) outside the capture
        for i in range(calls):
            fn(i % layers)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i % layers)
    return bench(graph.replay) / calls


def record(group: str, case: str, impl: str, ms: float | None, **extra: object) -> None:
    ROWS.append({"group": group, "case": case, "impl": impl, "ms": ms, **extra})


def check(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float = 2e-2) -> float:
    """Max abs error; fails (recorded) where |a - e| > tol * (1 + |e|), i.e. beyond bf16 rounding."""
    diff = (actual.float() - expected.float()).abs()
    if not (diff <= tol * (1 + expected.float().abs())).all():  # NaN fails too
        FAILURES.append(f"{name}: max abs error {diff.max().item():.3g}")
    return diff.max().item()


def try_impl(group: str, case: str, impl: str, make: Callable[[], Callable[[int], torch.Tensor]],
             expected: torch.Tensor | None, units: Callable[[float], dict], layers: int = 1) -> None:
    """Build an implementation (fn(layer) -> output), check layer 0, time it graphed and eager.

    A missing or broken optional library is recorded as a skip, not a crash.
    """
    try:
        fn = make()
        err = check(f"{group} {case} {impl}", fn(0), expected) if expected is not None else None
        eager = bench(lambda: fn(0))
    except Exception as e:
        record(group, case, impl, None, skipped=f"{type(e).__name__}: {str(e)[:120]}")
        return
    note, graphed = None, None
    if DEVICE == "cuda":
        try:
            graphed = graph_ms(fn, layers)
        except Exception as e:  # not capturable: keep the eager figure
            note = f"no graph: {type(e).__name__}: {str(e)[:80]}"
    record(group, case, impl, graphed, eager_ms=eager, err=err, note=note, **units(graphed or eager))


def make_cache(lengths: list[int], layers: int = 1, seed: int = 0) -> tuple[PagedKVCache, torch.Tensor, list]:
    """A cache of random K/V, each sequence on shuffled blocks. Returns the cache, block tables, block id lists."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    needs = [-(-n // PAGE) for n in lengths]
    config = ModelConfig(vocab_size=8, hidden_size=HIDDEN, intermediate_size=INTER, num_layers=layers,
                         num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM)
    cache = PagedKVCache(config, sum(needs), PAGE, DTYPE, DEVICE)
    cache.k.normal_(generator=gen)
    cache.v.normal_(generator=gen)
    order = torch.randperm(sum(needs), device=DEVICE, generator=gen)
    blocks = list(order.split(needs))
    tables = torch.zeros(len(lengths), max(needs), dtype=torch.int32, device=DEVICE)
    for b, ids in enumerate(blocks):
        tables[b, : len(ids)] = ids.int()
    return cache, tables, blocks


def layers_for(kv_bytes_per_layer: int) -> int:
    """Enough layers that one graph replay reads ~256 MB (4x the L2), at most Llama 8B's 32."""
    return max(1, min(32, -(-256 * 2**20 // kv_bytes_per_layer)))


def contiguous_kv(cache: PagedKVCache, blocks: list[torch.Tensor], length: int,
                  layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, kv_heads, length, head_dim] copies of each sequence's K/V, for the non-paged references."""
    by_block = (KV_HEADS, cache.num_blocks, PAGE, HEAD_DIM)

    def gather(slab: torch.Tensor) -> torch.Tensor:
        return torch.stack([slab.view(by_block)[:, ids].reshape(KV_HEADS, -1, HEAD_DIM)[:, :length] for ids in blocks])
    return gather(cache.k[layer]).contiguous(), gather(cache.v[layer]).contiguous()


def flex_fn():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def bench_decode(batch: int, context: int, skip_flex: bool) -> None:
    from llamarun.attention.paged_triton import TritonPagedAttention
    from llamarun.kernels.decode_attention import (
        decode_attention,
        decode_attention_reference,
        decode_workspace,
        default_num_splits,
        sm_count,
    )

    case = f"{batch}x{context}"
    kv_bytes = batch * context * KV_HEADS * HEAD_DIM * 2 * 2
    layers = layers_for(kv_bytes)
    cache, tables, blocks = make_cache([context] * batch, layers)
    lens = torch.full((batch,), context, dtype=torch.int32, device=DEVICE)
    q = torch.randn(batch, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    # This step's token, stored up front in every layer so the backends' own stores change nothing.
    new_kv = torch.randn(batch, KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    slots = torch.stack([ids[-1] for ids in blocks]).long() * PAGE + (context - 1) % PAGE  # [B] last token's slot
    for layer in range(layers):
        cache.k[layer].index_copy_(1, slots, new_kv.transpose(0, 1))
        cache.v[layer].index_copy_(1, slots, new_kv.transpose(0, 1))
    expected = decode_attention_reference(q, cache.k[0], cache.v[0], tables, lens, SCALE, PAGE)

    def units(ms: float) -> dict:
        return {"GB/s": round(kv_bytes / ms / 1e6, 1)}

    splits = default_num_splits(batch, KV_HEADS, tables.shape[1] * PAGE, sm_count(q.device))
    out = torch.empty_like(q)
    ws = decode_workspace(batch, HEADS, splits, HEAD_DIM, DEVICE) if splits > 1 else None
    try_impl("decode", case, f"triton kernel (splits {splits})", lambda: lambda i: decode_attention(
        q, cache.k[i], cache.v[i], tables, lens, SCALE, PAGE, out=out, num_splits=splits, workspace=ws),
        expected, units, layers)

    # Whole backends: the layer's K/V store plus attention, as the model calls them.
    meta = AttentionMetadata(slots, torch.arange(batch + 1, dtype=torch.int32, device=DEVICE), lens, tables,
                             batch, 1, context)
    torch_backend = PagedAttention(cache, meta)
    try_impl("decode", case, "torch backend", lambda: lambda i: torch_backend.forward(i, q, new_kv, new_kv),
             expected, units, layers)
    triton_backend = TritonPagedAttention(cache, max_batch=max(batch, 64), num_heads=HEADS)
    triton_backend.begin(meta)
    try_impl("decode", case, "triton backend", lambda: lambda i: triton_backend.forward(i, q, new_kv, new_kv),
             expected, units, layers)

    if not skip_flex:
        def make_flex():
            kv = [contiguous_kv(cache, blocks, context, layer) for layer in range(layers)]
            flex, q4 = flex_fn(), q[:, :, None, :].contiguous()  # [B, heads, 1, d]
            return lambda i: flex(q4, *kv[i], scale=SCALE, enable_gqa=True)[:, :, 0]
        try_impl("decode", case, "flex (contiguous)", make_flex, expected, units, layers)
    try_impl("decode", case, "flashinfer", lambda: flashinfer_decode(cache, blocks, q, context, layers), expected,
             units, layers)


def hnd_pages(cache: PagedKVCache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashInfer's HND page layout [pages, kv_heads, page, d]: a copy of one layer (ours is [kv_heads, slots, d])."""
    by_page = (KV_HEADS, cache.num_blocks, PAGE, HEAD_DIM)
    return (cache.k[layer].view(by_page).transpose(0, 1).contiguous(),
            cache.v[layer].view(by_page).transpose(0, 1).contiguous())


def flashinfer_decode(cache: PagedKVCache, blocks: list[torch.Tensor], q: torch.Tensor, context: int, layers: int):
    import flashinfer

    pages = [hnd_pages(cache, layer) for layer in range(layers)]
    indptr = torch.tensor([0] + [len(b) for b in blocks], device=DEVICE).cumsum(0).int()
    last = torch.full((len(blocks),), (context - 1) % PAGE + 1, dtype=torch.int32, device=DEVICE)
    workspace = torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device=DEVICE)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "HND")
    wrapper.plan(indptr, torch.cat(blocks).int(), last, HEADS, KV_HEADS, HEAD_DIM, PAGE, q_data_type=DTYPE,
                 kv_data_type=DTYPE)
    return lambda i: wrapper.run(q, pages[i])


def bench_prefill(num_seqs: int, chunk: int, prefix: int, skip_flex: bool) -> None:
    from llamarun.attention.paged_triton import TritonPagedAttention
    from llamarun.kernels.prefill_attention import prefill_attention, prefill_attention_reference

    case = f"{num_seqs}x{chunk}" + (f"+{prefix}" if prefix else "")
    length = prefix + chunk
    cache, tables, blocks = make_cache([length] * num_seqs, seed=1)
    kc, vc = cache.k[0], cache.v[0]
    lens = torch.full((num_seqs,), length, dtype=torch.int32, device=DEVICE)
    starts = torch.arange(num_seqs + 1, dtype=torch.int32, device=DEVICE) * chunk
    tokens = num_seqs * chunk
    q = torch.randn(tokens, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    expected = prefill_attention_reference(q, kc, vc, tables, lens, starts, SCALE, PAGE)
    pairs = num_seqs * sum(prefix + i + 1 for i in range(chunk))  # (query, visible key) pairs
    flops = 4 * pairs * HEADS * HEAD_DIM

    def units(ms: float) -> dict:
        return {"TFLOP/s": round(flops / ms / 1e9, 1)}

    out = torch.empty_like(q)
    try_impl("prefill", case, "triton kernel", lambda: lambda i: prefill_attention(
        q, kc, vc, tables, lens, starts, SCALE, PAGE, chunk, out=out), expected, units)

    # Backends re-store the chunk's K/V (already in the cache, so nothing changes) and attend.
    pos = torch.arange(prefix, length, device=DEVICE)
    slot_list = [ids.long()[pos // PAGE] * PAGE + pos % PAGE for ids in blocks]
    slots = torch.cat(slot_list)  # [tokens]
    new_k = torch.stack([kc[:, s] for s in slot_list]).transpose(1, 2).reshape(tokens, KV_HEADS, HEAD_DIM)
    new_v = torch.stack([vc[:, s] for s in slot_list]).transpose(1, 2).reshape(tokens, KV_HEADS, HEAD_DIM)
    meta = AttentionMetadata(slots, starts, lens, tables, 0, chunk, length)
    torch_backend = PagedAttention(cache, meta)
    try_impl("prefill", case, "torch backend", lambda: lambda i: torch_backend.forward(0, q, new_k, new_v),
             expected, units)
    triton_backend = TritonPagedAttention(cache, num_heads=HEADS)
    triton_backend.begin(meta)
    try_impl("prefill", case, "triton backend", lambda: lambda i: triton_backend.forward(0, q, new_k, new_v),
             expected, units)

    if prefix == 0:  # contiguous references for plain causal prompts
        q4 = q.view(num_seqs, chunk, HEADS, HEAD_DIM).transpose(1, 2).contiguous()  # [B, heads, chunk, d]
        k4, v4 = contiguous_kv(cache, blocks, length)

        def from_4d(o: torch.Tensor) -> torch.Tensor:
            return o.transpose(1, 2).reshape(tokens, HEADS, HEAD_DIM)

        try_impl("prefill", case, "sdpa (contiguous)", lambda: lambda i: from_4d(F.scaled_dot_product_attention(
            q4, k4, v4, is_causal=True, scale=SCALE, enable_gqa=True)), expected, units)
        if not skip_flex:
            def make_flex():
                from torch.nn.attention.flex_attention import create_block_mask

                mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, chunk, length, device=DEVICE)
                flex = flex_fn()
                return lambda i: from_4d(flex(q4, k4, v4, block_mask=mask, scale=SCALE, enable_gqa=True))
            try_impl("prefill", case, "flex (contiguous)", make_flex, expected, units)
    try_impl("prefill", case, "flashinfer", lambda: flashinfer_prefill(cache, blocks, q, starts, length), expected,
             units)


def flashinfer_prefill(cache: PagedKVCache, blocks: list[torch.Tensor], q: torch.Tensor, starts: torch.Tensor,
                       length: int):
    import flashinfer

    pages = hnd_pages(cache, 0)
    indptr = torch.tensor([0] + [len(b) for b in blocks], device=DEVICE).cumsum(0).int()
    last = torch.full((len(blocks),), (length - 1) % PAGE + 1, dtype=torch.int32, device=DEVICE)
    workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=DEVICE)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "HND")
    wrapper.plan(starts, indptr, torch.cat(blocks).int(), last, HEADS, KV_HEADS, HEAD_DIM, PAGE, causal=True,
                 q_data_type=DTYPE, kv_data_type=DTYPE)
    return lambda i: wrapper.run(q, pages)


def bench_small(tokens: int) -> None:
    """The fused elementwise kernels against the eager torch the model runs today."""
    from llamarun.kernels.activation import silu_and_mul, silu_and_mul_reference
    from llamarun.kernels.kv_store import store_kv
    from llamarun.kernels.norm import fused_add_rms_norm, fused_add_rms_norm_reference, rms_norm, rms_norm_reference
    from llamarun.kernels.rotary import apply_rotary_, apply_rotary_reference

    case, size = f"T={tokens}", torch.finfo(DTYPE).bits // 8

    def gbs(nbytes: int) -> Callable[[float], dict]:
        return lambda ms: {"GB/s": round(nbytes / ms / 1e6, 1)}

    x = torch.randn(tokens, HIDDEN, device=DEVICE, dtype=DTYPE)
    res = torch.randn_like(x)
    w = torch.randn(HIDDEN, device=DEVICE, dtype=DTYPE) * 0.1 + 1
    row = tokens * HIDDEN * size
    expected = rms_norm_reference(x, w, 1e-5)
    try_impl("norm", case, "triton rms_norm", lambda: lambda i: rms_norm(x, w, 1e-5), expected, gbs(2 * row))
    try_impl("norm", case, "eager rms_norm", lambda: lambda i: rms_norm_reference(x, w, 1e-5), expected,
             gbs(2 * row))
    xa, ra = x.clone(), res.clone()
    check(f"add+norm {case}", fused_add_rms_norm(xa, ra, w, 1e-5)[0], fused_add_rms_norm_reference(x, res, w, 1e-5)[0])
    try_impl("norm", case, "triton add+rms_norm (in place)", lambda: lambda i: fused_add_rms_norm(xa, ra, w, 1e-5),
             None, gbs(4 * row))
    try_impl("norm", case, "eager add+rms_norm", lambda: lambda i: fused_add_rms_norm_reference(x, res, w, 1e-5),
             None, gbs(4 * row))

    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, device=DEVICE, dtype=DTYPE)
    q = qkv[:, : HEADS * HEAD_DIM].view(tokens, HEADS, HEAD_DIM)
    k = qkv[:, HEADS * HEAD_DIM: (HEADS + KV_HEADS) * HEAD_DIM].view(tokens, KV_HEADS, HEAD_DIM)
    v = qkv[:, (HEADS + KV_HEADS) * HEAD_DIM:].view(tokens, KV_HEADS, HEAD_DIM)
    angles = torch.rand(tokens, HEAD_DIM // 2, device=DEVICE) * 100
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(DTYPE), torch.cat([angles.sin()] * 2, -1).to(DTYPE)
    qr, kr = q.clone(), k.clone()
    apply_rotary_(qr, kr, cos, sin)
    check(f"rotary q {case}", qr, apply_rotary_reference(q, cos, sin))
    check(f"rotary k {case}", kr, apply_rotary_reference(k, cos, sin))
    rot = 2 * tokens * (HEADS + KV_HEADS) * HEAD_DIM * size
    try_impl("rotary", case, "triton q+k in place", lambda: lambda i: apply_rotary_(q, k, cos, sin), None, gbs(rot))
    try_impl("rotary", case, "eager q, k", lambda: lambda i: (apply_rotary_reference(q, cos, sin),
                                                             apply_rotary_reference(k, cos, sin)), None, gbs(rot))

    gate_up = torch.randn(tokens, 2 * INTER, device=DEVICE, dtype=DTYPE)
    expected = silu_and_mul_reference(gate_up)
    act = 3 * tokens * INTER * size
    try_impl("act", case, "triton silu_and_mul", lambda: lambda i: silu_and_mul(gate_up), expected, gbs(act))
    try_impl("act", case, "eager chunk+silu*up", lambda: lambda i: silu_and_mul_reference(gate_up), expected,
             gbs(act))

    slabs = [torch.zeros(KV_HEADS, 8 * tokens + 64, HEAD_DIM, device=DEVICE, dtype=DTYPE) for _ in range(4)]
    slots = torch.randperm(slabs[0].shape[1], device=DEVICE)[:tokens]

    def torch_store(i: int) -> None:  # what PagedAttention does
        slabs[2].index_copy_(1, slots, k.transpose(0, 1))
        slabs[3].index_copy_(1, slots, v.transpose(0, 1))

    store_kv(k, v, slabs[0], slabs[1], slots)
    torch_store(0)
    check(f"kv_store {case}", torch.cat(slabs[:2]), torch.cat(slabs[2:]), tol=0.0)
    kvb = 4 * tokens * KV_HEADS * HEAD_DIM * size
    try_impl("kv_store", case, "triton store_kv", lambda: lambda i: store_kv(k, v, slabs[0], slabs[1], slots), None,
             gbs(kvb))
    try_impl("kv_store", case, "torch index_copy_ x2", lambda: torch_store, None, gbs(kvb))


def print_table() -> None:
    print(f"\n{'group':<14}{'case':<13}{'impl':<32}{'graph ms':>10}{'eager ms':>10}  {'rate (graph)':<17}{'err/note'}")
    for r in ROWS:
        rate = next((f"{r[k]} {k}" for k in ("GB/s", "TFLOP/s") if k in r), "")
        graphed = f"{r['ms']:.4f}" if r["ms"] is not None else "-"
        eager = f"{r['eager_ms']:.4f}" if r.get("eager_ms") is not None else "skip"
        note = f"{r['err']:.2g}" if r.get("err") is not None else (r.get("skipped") or r.get("note") or "")[:60]
        print(f"{r['group']:<14}{r['case']:<13}{r['impl']:<32}{graphed:>10}{eager:>10}  {rate:<17}{note}")


def _smoke_settings() -> None:
    """Tiny shapes in Triton's interpreter: only proves the script runs end to end."""
    global DEVICE, DECODE_CASES, PREFILL_CASES, SMALL_TOKENS
    global HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTER, DTYPE, SCALE
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels (and so triton) are first imported
    DEVICE, DTYPE = "cpu", torch.float32
    HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTER = 4, 2, 64, 256, 512
    SCALE = HEAD_DIM**-0.5
    DECODE_CASES, PREFILL_CASES, SMALL_TOKENS = [(2, 40)], [(2, 20, 0), (1, 16, 8)], (3,)


def finish(start: float, name: str) -> int:
    """Print the table, write $OUT/<name>, return the exit status."""
    import triton

    elapsed = time.perf_counter() - start
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke run)"
    info = {"device": device, "torch": torch.__version__, "triton": triton.__version__,
            "seconds": round(elapsed, 1), "failures": FAILURES, "rows": ROWS}
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        Path(os.environ["OUT"], name).write_text(json.dumps(info, indent=1))
    print_table()
    print(f"\n{device}, torch {torch.__version__}, triton {triton.__version__}, {elapsed:.0f}s")
    print("ALL CHECKS PASSED" if not FAILURES else "FAILED CHECKS:\n  " + "\n  ".join(FAILURES))
    return 1 if FAILURES else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-flex", action="store_true", help="leave out FlexAttention (it compiles per shape)")
    parser.add_argument("--smoke", action="store_true", help="check this script on the CPU at tiny shapes")
    args = parser.parse_args()
    if args.smoke:
        _smoke_settings()
        args.skip_flex = True
    elif not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    start = time.perf_counter()
    torch.manual_seed(0)
    for batch, context in DECODE_CASES:
        bench_decode(batch, context, args.skip_flex)
        print(f"decode {batch}x{context} done at {time.perf_counter() - start:.0f}s", flush=True)
    for num_seqs, chunk, prefix in PREFILL_CASES:
        bench_prefill(num_seqs, chunk, prefix, args.skip_flex)
        print(f"prefill {num_seqs}x{chunk}+{prefix} done at {time.perf_counter() - start:.0f}s", flush=True)
    for tokens in SMALL_TOKENS:
        bench_small(tokens)
    return finish(start, "kernels.json")


if __name__ == "__main__":
    sys.exit(main())
