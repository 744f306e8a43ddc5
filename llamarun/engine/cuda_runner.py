"""The model runner for CUDA: persistent input buffers, Triton attention, CUDA graphs for decode batches.

What a GPU decode step costs is mostly launches and host work, not math: the eager runner pays a Python
pass over 30-80 layers and a few hundred kernel launches per token. Here:
- every input the forward pass reads lives in persistent device buffers, filled each step from pinned
  host memory by two copies (int64 token data, int32 attention metadata);
- decode-only steps replay a CUDA graph captured at start-up for the next bucket size (1, 2, 4, 6, 8, ...),
  padded rows writing no cache slot (slot -1) and attending to nothing (length 0);
- a step that is one prompt (or prompt chunk) of up to 512 tokens, the time to first token of a lone
  request, replays a prefill graph for the next token bucket; its padded tokens belong to no sequence;
- other prefill and mixed steps run eagerly on the same buffers and kernels;
- sampling stays on the GPU and the step syncs once, when the sampled tokens are read;
- overlapped decoding (engine/llm_engine.py): `launch` queues a decode step and copies its tokens to pinned
  memory without waiting, taking a planned-ahead step's PENDING tokens from the previous step's samples on
  the GPU (one gather); `collect` waits for them. `LLAMARUN_OVERLAP=off` runs one step at a time.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from llamarun.attention.backend import use_backend
from llamarun.attention.metadata import AttentionMetadata
from llamarun.attention.paged_torch import PagedKVCache
from llamarun.attention.paged_triton import TritonPagedAttention
from llamarun.engine.batch import HostBatch, pack_step
from llamarun.engine.runner import ModelRunner
from llamarun.engine.step import SampledToken, SchedulerOutput
from llamarun.models.llama import LlamaForCausalLM
from llamarun.structured.vocab import GrammarVocab
from llamarun.utils.progress import count_bar

log = logging.getLogger(__name__)
# Decode batch buckets. 6 is there for INT4: 5-6 rows padded to 8 would leave the integer GEMV, which beats the
# tensor-core kernel up to 6 rows for most shapes (int4_gemv.rows_for); 70B INT4 at 6 concurrent requests made 155.5
# output tok/s with it against 126.5 without on an H200 (benchmarks/results/gpu-int4-gemv-rows-h200-2026-11-30.md).
GRAPH_SIZES = (1, 2, 4, 6, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
PREFILL_SIZES = (16, 32, 64, 128, 256, 512)  # token buckets of a lone prompt step


@dataclass
class _Launched:
    """A queued decode step: its sampled tokens on the GPU (what the next step reads) and on their way to the host."""

    sample_ids: list[str]
    rows: dict[str, int]  # request id -> row of `tokens`
    tokens: torch.Tensor  # [S] int64 on the GPU
    host: torch.Tensor  # [S] int64, pinned: filled when `done` has passed
    done: torch.cuda.Event


class CudaModelRunner(ModelRunner):
    """ModelRunner with persistent buffers, the Triton backend and CUDA-graph decode."""

    overlap = os.environ.get("LLAMARUN_OVERLAP", "on").strip().lower() != "off"

    def __init__(self, model: LlamaForCausalLM, cache: PagedKVCache, *, max_tokens: int, max_seqs: int,
                 context_length: int, use_graphs: bool = True, grammar_vocab: GrammarVocab | None = None) -> None:
        super().__init__(model, cache, grammar_vocab)
        config = model.config
        self.max_tokens, self.max_seqs = max_tokens, max_seqs
        self.width = -(-context_length // cache.block_size)  # block-table columns: one full context
        self.backend = TritonPagedAttention(cache, max_batch=max(max_seqs, 1), num_heads=config.num_heads)
        m, s, w = max_tokens, max_seqs, self.width
        # int64: token ids | positions | slots | logits rows.  int32: query_start | seq_lens | block tables.
        self._host64 = torch.zeros(3 * m + s, dtype=torch.int64, pin_memory=True)
        self._host32 = torch.zeros(2 * s + 1 + s * w, dtype=torch.int32, pin_memory=True)
        self._np64, self._np32 = self._host64.numpy(), self._host32.numpy()
        self._dev64 = torch.zeros_like(self._host64, device=self.device)
        self._dev32 = torch.zeros_like(self._host32, device=self.device)
        d64, d32 = self._dev64, self._dev32
        self.ids, self.positions, self.slots, self.rows = d64[:m], d64[m:2 * m], d64[2 * m:3 * m], d64[3 * m:]
        self.query_start, self.seq_lens = d32[:s + 1], d32[s + 1:2 * s + 1]
        self.tables = d32[2 * s + 1:].view(s, w)
        self._copied = torch.cuda.Event()  # the host buffers may be refilled once the last copy is done
        self._copied.record()
        # Sampled tokens on their way to the host, two buffers taking turns: a step is collected before the
        # step after the next one is launched, so its buffer is read before it is written again.
        self._host_tokens = [torch.zeros(max(max_seqs, 1), dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self._turn = 0
        # ("decode", batch size) or ("prefill", tokens) -> (graph, its logits output)
        self.graphs: dict[tuple[str, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.steps = {"graph": 0, "eager": 0}  # how steps ran (tests and benchmarks read it)
        self.capture_seconds = 0.0
        if use_graphs:
            self.capture([b for b in GRAPH_SIZES if b <= min(max_seqs, max_tokens)],
                         [t for t in PREFILL_SIZES if t <= min(max_tokens, context_length)])

    # ----- one step -----

    @torch.inference_mode()
    def run(self, step: SchedulerOutput) -> dict[str, SampledToken]:
        self._update_states(step)
        if not step.seqs:
            return {}
        batch = pack_step(step, self.cache.block_size)
        key = self._graph_key(batch)
        self.steps["graph" if key else "eager"] += 1
        if key:
            kind, size = key
            self._fill(batch, size if kind == "decode" else 1, size)
            graph, logits = self.graphs[key]
            graph.replay()
            logits = logits[:len(batch.sample_ids)]  # [S, vocab]
        else:
            self._fill(batch, batch.num_seqs, len(batch.token_ids))
            meta = self._metadata(batch.num_seqs, batch.num_decodes, batch.max_query_len, batch.max_seq_len)
            self.backend.begin(meta)
            tokens = len(batch.token_ids)
            with use_backend(self.backend):
                if not batch.logits_rows:
                    self.model.model(self.ids[:tokens], self.positions[:tokens])  # prefill chunks only
                    return {}
                rows = self.rows[:len(batch.logits_rows)]
                logits = self.model(self.ids[:tokens], self.positions[:tokens], rows)  # [S, vocab]
        return self._sample(logits, batch.sample_ids)

    def _graph_key(self, batch: HostBatch) -> tuple[str, int] | None:
        """The graph a step replays in: all decodes that sample, or one sampling prompt chunk; else None."""
        sizes = [size for kind, size in self.graphs]
        if batch.num_decodes == batch.num_seqs and len(batch.logits_rows) == batch.num_seqs:
            size = next((b for b in sorted(sizes) if b >= batch.num_seqs and ("decode", b) in self.graphs), None)
            return ("decode", size) if size else None
        if batch.num_seqs == 1 and batch.num_decodes == 0 and batch.logits_rows:
            tokens = len(batch.token_ids)
            size = next((t for t in sorted(sizes) if t >= tokens and ("prefill", t) in self.graphs), None)
            return ("prefill", size) if size else None
        return None

    def _fill(self, batch: HostBatch, size: int, padded: int, gather: list[int] | None = None) -> None:
        """Copy the step into the device buffers, padded to `size` sequences and `padded` tokens.

        Padded sequences (decode graphs) have one query, length 0 and slot -1; padded tokens of a prompt
        graph belong to no sequence and write no slot: whatever they compute is never read. `gather` (a
        decode step planned ahead) goes where the logits rows would, which decode graphs do not read: the
        previous step's row of each sequence's token.
        """
        n, t, m, s, w = batch.num_seqs, len(batch.token_ids), self.max_tokens, self.max_seqs, self.width
        if t > m or n > s:
            raise ValueError(f"a step of {t} tokens / {n} sequences exceeds the runner's {m} / {s}")
        self._copied.synchronize()
        h64, h32 = self._np64, self._np32
        h64[:t], h64[m:m + t], h64[2 * m:2 * m + t] = batch.token_ids, batch.positions, batch.slot_mapping
        h64[t:padded], h64[m + t:m + padded], h64[2 * m + t:2 * m + padded] = 0, 0, -1
        h64[3 * m:3 * m + len(batch.logits_rows)] = batch.logits_rows
        if gather is not None:
            h64[3 * m:3 * m + len(gather)] = gather
        h32[:n + 1] = batch.query_start
        h32[n + 1:size + 1] = batch.query_start[-1] + np.arange(1, size - n + 1)  # one padded query per row
        h32[s + 1:s + 1 + n], h32[s + 1 + n:s + 1 + size] = batch.seq_lens, 0
        tables = h32[2 * s + 1:2 * s + 1 + size * w].reshape(size, w)
        tables[:] = 0
        for row, table in enumerate(batch.block_tables):
            tables[row, :len(table)] = table
        self._dev64.copy_(self._host64, non_blocking=True)
        self._dev32[:2 * s + 1 + size * w].copy_(self._host32[:2 * s + 1 + size * w], non_blocking=True)
        self._copied.record()

    def _metadata(self, seqs: int, decodes: int, max_query_len: int, max_seq_len: int) -> AttentionMetadata:
        tokens = int(self._np32[seqs])  # query_start[seqs] on the host copy
        return AttentionMetadata(self.slots[:tokens], self.query_start[:seqs + 1], self.seq_lens[:seqs],
                                 self.tables[:seqs], decodes, max_query_len, max_seq_len)

    def _sample(self, logits: torch.Tensor, sample_ids: list[str]) -> dict[str, SampledToken]:
        states = [self.states[rid] for rid in sample_ids]
        result = self.sampler.sample(logits, states)
        return self._answer(result, sample_ids, states)

    # ----- overlapped decoding -----

    def can_overlap(self, step: SchedulerOutput) -> bool:
        return super().can_overlap(step) and any(kind == "decode" and size >= len(step.seqs)
                                                 for kind, size in self.graphs)

    @torch.inference_mode()
    def launch(self, step: SchedulerOutput, prev: _Launched | None = None) -> _Launched:
        """Queue a decode step (`can_overlap`) without waiting for it; PENDING tokens come from `prev` on the GPU."""
        self._update_states(step)
        batch = pack_step(step, self.cache.block_size)
        key = self._graph_key(batch)
        if key is None or key[0] != "decode":
            raise RuntimeError(f"launch takes decode steps that fit a captured graph, not {batch.num_seqs} "
                               f"sequences of {len(batch.token_ids)} tokens")
        n, size = batch.num_seqs, key[1]
        gather = [prev.rows[rid] for rid in batch.sample_ids] if prev is not None else None
        self._fill(batch, size, size, gather)
        if prev is not None:  # every sequence of a planned-ahead step decodes the token `prev` sampled for it
            self.ids[:n].copy_(prev.tokens.index_select(0, self.rows[:n]))
        self.steps["graph"] += 1
        graph, logits = self.graphs[key]
        graph.replay()
        states = [self.states[rid] for rid in batch.sample_ids]
        tokens = self.sampler.sample(logits[:n], states).token_ids  # [n] on the GPU
        host = self._host_tokens[self._turn][:n]
        self._turn ^= 1
        host.copy_(tokens, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _Launched(batch.sample_ids, {rid: i for i, rid in enumerate(batch.sample_ids)}, tokens, host, done)

    def collect(self, launched: _Launched, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, SampledToken]:
        launched.done.synchronize()  # the step's one wait
        sampled = {}
        for rid, token in zip(launched.sample_ids, launched.host.tolist(), strict=True):
            state = self.states.get(rid)
            if rid in skip or state is None:  # ended (or dropped) since the step was planned
                continue
            state.append(token)
            sampled[rid] = SampledToken(token)
        return sampled

    # ----- CUDA graphs -----

    @torch.inference_mode()
    def capture(self, decode_sizes: list[int], prefill_sizes: list[int]) -> None:
        """Capture the decode and prompt graphs, largest first so smaller ones reuse the shared memory pool."""
        t0 = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        jobs = [("prefill", t) for t in prefill_sizes] + [("decode", b) for b in decode_sizes]
        with count_bar("capturing CUDA graphs", len(jobs), unit="graphs") as bar:
            for kind, size in sorted(jobs, key=lambda job: -job[1]):
                self._capture_one(kind, size, pool)
                bar.advance()
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0
        log.info("captured %d CUDA graphs in %.1f s", len(jobs), self.capture_seconds)

    def _capture_one(self, kind: str, size: int, pool: tuple[int, int]) -> None:
        if kind == "decode":
            self._fill(_idle_batch(size), size, size)
            meta, rows = self._metadata(size, size, 1, self.width * self.cache.block_size), None
        else:  # one prompt chunk that attends to the whole (empty) context: slot -1, no writes
            self._fill(_idle_prompt(size, self.cache.block_size), 1, size)
            meta, rows = self._metadata(1, 0, size, size), self.rows[:1]
        self.backend.begin(meta)
        with use_backend(self.backend):
            self.model(self.ids[:size], self.positions[:size], rows)  # warm-up: compiles kernels, picks GEMMs
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                logits = self.model(self.ids[:size], self.positions[:size], rows)  # [rows, vocab]
        self.graphs[(kind, size)] = (graph, logits)


def _idle_batch(size: int) -> HostBatch:
    """A decode batch whose rows write nothing and read nothing: what decode graphs are captured on."""
    return HostBatch(token_ids=[0] * size, positions=[0] * size, slot_mapping=[-1] * size,
                     query_start=list(range(size + 1)), seq_lens=[0] * size, block_tables=[[] for _ in range(size)],
                     num_decodes=size, logits_rows=list(range(size)), sample_ids=[])


def _idle_prompt(tokens: int, block_size: int) -> HostBatch:
    """One prompt chunk of `tokens` that writes no slot (its keys are read from block 0, never stored)."""
    return HostBatch(token_ids=[0] * tokens, positions=list(range(tokens)), slot_mapping=[-1] * tokens,
                     query_start=[0, tokens], seq_lens=[tokens], block_tables=[[0] * -(-tokens // block_size)],
                     num_decodes=0, logits_rows=[tokens - 1], sample_ids=[])
