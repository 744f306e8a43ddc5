"""A whole all-decode CPU step in one native call (`kernels/cpu/decode_step.c`), beside the runner that uses it.

The per-op path calls a native kernel per matmul, norm, rotary and attention of every layer, each through
Python module calls, ctypes and fresh tensors; on the default model's 30 thin layers that work was a third of a
decode step. `DecodeStep` instead holds a plan made once per model and cache (pointers to each layer's w4a8
records, norm weights and K/V slabs) and per step passes the embeddings, cos/sin, slots, block tables and
lengths; the embedding and rotary lookups and the final norm are native too (the rotary table made once by the
model's RotaryEmbedding), and so is an int8 head (the tied head of a 4-bit model); any other head stays the
model's own call.

It is used only where it computes what the model file would: a `LlamaForCausalLM` whose every decoder linear is
an `Int4Linear` holding native records, float32 embeddings, norms and cache on the CPU, shapes the C takes
(head_dim a multiple of 32, up to 256), an all-decode step of 1..8 rows, the native kernels built and
`LLAMARUN_CPU_KERNELS` not off. Anything else returns None and the runner keeps the per-op path; which path
runs is logged once per model. `LLAMARUN_CPU_DECODE_STEP=off` turns it off (for A/B and safety).

It lives in engine/, not kernels/, because it reads the model's modules and the runner's inputs (imports point
down); models/llama.py stays free of it (DESIGN decision 2).
"""

from __future__ import annotations

import ctypes
import logging
import os

import torch

from llamarun.attention.paged_torch import PagedKVCache
from llamarun.engine.batch import HostBatch

log = logging.getLogger("llamarun.kernels")

ENV = "LLAMARUN_CPU_DECODE_STEP"  # auto (default) | off
MAX_ROWS = 8  # decode_step.c's MAX_ROWS
MAX_HEAD_DIM = 256
BLOCK = 32


class DecodeStep:
    """The native step for one model over one paged cache; call it with an all-decode step's inputs."""

    def __init__(self, lib: ctypes.CDLL, model: torch.nn.Module, cache: PagedKVCache) -> None:
        config = model.config
        self.lib, self.model = lib, model
        self.hidden = config.hidden_size
        self.eps, self.scale = config.rms_norm_eps, config.head_dim ** -0.5
        slots = cache.num_blocks * cache.block_size
        self.dims = torch.tensor([config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads,
                                  config.head_dim, config.intermediate_size, cache.block_size, slots],
                                 dtype=torch.long)
        pointers = []  # per layer, decode_step.c's L_*: four matmuls' records, two norm weights, K and V slabs
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            pointers += [attn.qkv_proj.records.data_ptr(), attn.o_proj.records.data_ptr(),
                         mlp.gate_up_proj.records.data_ptr(), mlp.down_proj.records.data_ptr(),
                         layer.input_layernorm.weight.data_ptr(), layer.post_attention_layernorm.weight.data_ptr(),
                         cache.k[i].data_ptr(), cache.v[i].data_ptr()]
        self.layers = torch.tensor(pointers, dtype=torch.long)  # [layers * 8]; the model and cache keep them alive
        self.cache, self.slots = cache, slots
        self.final_norm = model.model.norm.weight
        self.embed = model.model.embed_tokens.weight  # [vocab, hidden] float32, rows copied by the C
        self.rope_cos = self.rope_sin = torch.empty(0, config.head_dim)  # [positions, head_dim], grown on demand
        self.out = torch.empty(MAX_ROWS, self.hidden, dtype=torch.float32)  # the final norm, read by the head
        # An int8 head (a 4-bit model's tied head) runs inside the call, into logits kept from step to step: the
        # separate call cost a fork and a fresh 196 KB output whose pages faulted in every step (150 us).
        self.logits = (torch.empty(MAX_ROWS, model.lm_head.qweight.shape[0], dtype=torch.float32)
                       if _native_int8_head(model) else None)
        self.work = torch.empty(0, dtype=torch.float32)  # grown to the largest step seen, never shrunk

    @classmethod
    def for_model(cls, model: torch.nn.Module, cache: PagedKVCache) -> DecodeStep | None:
        """The native step for `model` and `cache`, or None (the reason logged) where it does not apply."""
        reason = _unsupported(model, cache)
        lib = None
        if reason is None:
            from llamarun.kernels.cpu.build import load_decode_step

            lib = load_decode_step()
            reason = None if lib is not None else "the native kernels did not build here"
        if reason is not None:
            log.info("CPU decode steps: the per-op path (%s)", reason)
            return None
        log.info("CPU decode steps: one native call per step (kernels/cpu/decode_step.c)")
        return cls(lib, model, cache)

    def takes(self, batch: HostBatch) -> bool:
        """Whether this step is one the native call runs: 1..8 decodes, each sampling, nothing else."""
        rows = len(batch.token_ids)
        return 0 < rows <= MAX_ROWS and batch.num_decodes == rows == batch.num_seqs and len(batch.logits_rows) == rows

    def __call__(self, batch: HostBatch) -> torch.Tensor:
        """Logits [rows, vocab] in float32 for an all-decode step that `takes` accepted.

        The host arrays go to C as they are (ctypes arrays: no tensors to build); the C checks every token id,
        length, slot and block against the table and the cache before it reads or writes.
        """
        rows = len(batch.token_ids)
        width = max(len(t) for t in batch.block_tables)
        if len(batch.positions) != rows or len(batch.slot_mapping) != rows or len(batch.seq_lens) != rows:
            raise ValueError(f"decode step: positions, slots and lengths do not fit {rows} decode rows")
        tables = (ctypes.c_int * (rows * width))()
        for r, table in enumerate(batch.block_tables):
            tables[r * width: r * width + len(table)] = table  # the rest stays 0, never read (seq_lens)
        need = self.lib.decode_step_work(self.dims.data_ptr(), rows, width)
        if need < 0:
            raise ValueError(f"decode step: {rows} rows over {width}-block tables is not a shape it takes")
        if self.work.numel() < need:
            self.work = torch.empty(need, dtype=torch.float32)
        out = self.out[:rows]
        last = max(batch.positions)
        if last >= self.rope_cos.shape[0]:
            if last >= self.slots:  # every position of a sequence has a slot, so this is no real step
                raise ValueError(f"decode step: position {last} is outside the table or cache of {self.slots}")
            self._grow_rope(last + 1)
        longs, ints = ctypes.c_long * rows, ctypes.c_int * rows
        code = self.lib.decode_step(
            self.dims.data_ptr(), self.layers.data_ptr(), self.final_norm.data_ptr(), self.eps, self.scale,
            longs(*batch.token_ids), self.embed.data_ptr(), self.embed.shape[0], longs(*batch.positions),
            self.rope_cos.data_ptr(), self.rope_sin.data_ptr(), self.rope_cos.shape[0], out.data_ptr(),
            *self._head_args(rows), longs(*batch.slot_mapping), tables, width, ints(*batch.seq_lens), rows,
            self.work.data_ptr(), self.work.numel())
        if code != 0:
            raise ValueError(f"decode step: the native call refused the step ({code}: "
                             + ("a token, length, slot or block outside the table or cache)" if code == -2
                                else "its shape)"))
        if self.logits is not None:
            return self.logits[:rows]  # [rows, vocab], made by the call; reused by the next step
        return self.model.lm_head(out).float()  # [rows, vocab]

    def _head_args(self, rows: int) -> tuple:
        """(weights, scales, rows of the head, logits) for the C, or NULLs where the head stays the model's."""
        if self.logits is None:
            return None, None, 0, None
        head = self.model.lm_head
        return head.qweight.data_ptr(), head.scale.data_ptr(), head.qweight.shape[0], self.logits.data_ptr()

    def _grow_rope(self, positions: int) -> None:
        """cos/sin for positions [0, n) with n >= `positions`, doubling: made by the model's own RotaryEmbedding,
        so the native step rotates by exactly the per-op path's values (a libm cos differs from PyTorch's by an
        ulp at times, and that alone moved the default model's greedy text after ten tokens)."""
        n = min(max(positions, 2 * self.rope_cos.shape[0], 256), self.slots)
        cos, sin = self.model.model.rotary(torch.arange(n), torch.float32)  # [n, head_dim] each
        self.rope_cos, self.rope_sin = cos.contiguous(), sin.contiguous()


def _native_int8_head(model: torch.nn.Module) -> bool:
    """Whether the head is an Int8Linear the C takes as gemv_w8a8.c would: [vocab, hidden] int8, float32 scales."""
    from llamarun.quant.int8 import Int8Linear

    head, hidden = model.lm_head, model.config.hidden_size
    return (type(head) is Int8Linear and head.qweight.dtype == torch.int8 and head.qweight.dim() == 2
            and head.qweight.shape[1] == hidden and head.qweight.is_contiguous() and hidden % BLOCK == 0
            and head.scale.dtype == torch.float32 and head.scale.shape == head.qweight.shape[:1]
            and head.scale.is_contiguous())


def _unsupported(model: torch.nn.Module, cache: PagedKVCache) -> str | None:
    """Why the native step cannot run this model over this cache, or None when it can."""
    from llamarun.layers.norm import RMSNorm
    from llamarun.models.llama import LlamaDecoderLayer, LlamaForCausalLM
    from llamarun.quant.int4 import Int4Linear

    if os.environ.get(ENV, "auto").strip().lower() == "off":
        return f"{ENV}=off"
    if type(model) is not LlamaForCausalLM:
        return f"the model is a {type(model).__name__}"
    if cache.k.device.type != "cpu" or cache.k.dtype != torch.float32 or not cache.k.is_contiguous():
        return "the KV cache is not float32 on the CPU"
    c = model.config
    if (c.head_dim % BLOCK or c.head_dim > MAX_HEAD_DIM or c.hidden_size % BLOCK or c.intermediate_size % BLOCK
            or c.num_heads % c.num_kv_heads):
        return f"shapes it does not take (head_dim {c.head_dim}, hidden {c.hidden_size})"
    if cache.k.shape[:2] != (c.num_layers, c.num_kv_heads) or cache.k.shape[3] != c.head_dim:
        return "the cache's shape is not the model's"
    embed = model.model.embed_tokens.weight
    if embed.dtype != torch.float32 or embed.dim() != 2 or embed.shape[1] != c.hidden_size or not embed.is_contiguous():
        return f"the embeddings are not a contiguous float32 [vocab, {c.hidden_size}] table"
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    h, i = c.hidden_size, c.intermediate_size
    shapes = {"qkv_proj": (q + 2 * kv, h), "o_proj": (h, q), "gate_up_proj": (2 * i, h), "down_proj": (h, i)}
    norms = [model.model.norm]
    if len(model.model.layers) != c.num_layers:
        return "the model's layer count is not its config's"
    for layer in model.model.layers:
        if type(layer) is not LlamaDecoderLayer:
            return f"a layer is a {type(layer).__name__}"
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
        linears = {"qkv_proj": layer.self_attn.qkv_proj, "o_proj": layer.self_attn.o_proj,
                   "gate_up_proj": layer.mlp.gate_up_proj, "down_proj": layer.mlp.down_proj}
        for name, linear in linears.items():
            if type(linear) is not Int4Linear or not linear._native:
                return f"{name} is {getattr(linear, 'format', type(linear).__name__)}, not native int4 records"
            n, k = shapes[name]
            records = linear.records
            if ((linear.out_features, linear.in_features) != (n, k) or records.dtype != torch.uint8
                    or records.shape != (-(-n // 4), k // BLOCK, 96) or not records.is_contiguous()):
                return f"{name}'s records do not fit its shape"
    for norm in norms:
        if (type(norm) is not RMSNorm or norm.eps != c.rms_norm_eps or norm.weight.dtype != torch.float32
                or norm.weight.shape != (c.hidden_size,) or not norm.weight.is_contiguous()):
            return "a norm is not a float32 RMSNorm of the model's eps"
    return None
