"""One step's batch layout for attention, as device tensors the runner fills once per step.

Every attention backend reads the same metadata, built once per step (not per layer): the GPU runner
keeps these tensors as views of persistent buffers, so a CUDA graph captured over them replays with
new contents and no new allocations. Sequences are ordered decodes first (one query each), then
prefill chunks; padded rows (graph batches rounded up to a bucket) have `seq_lens == 0` and slot -1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Where this step's tokens sit in the packed batch and in the paged KV cache.

    slot_mapping  [T] int64: cache slot (block * block_size + offset) of each new token; -1 = padding.
    query_start   [B + 1] int32: sequence b owns packed query rows [query_start[b], query_start[b + 1]).
    seq_lens      [B] int32: tokens sequence b attends over (cached ones plus this step's).
    block_tables  [B, max_blocks] int32: the blocks holding each sequence's tokens, in order.
    num_decodes: sequences [0, num_decodes) have exactly one query each.
    max_query_len / max_seq_len: host-side bounds (for choosing kernels, never for graph shapes).
    """

    slot_mapping: torch.Tensor
    query_start: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    num_decodes: int
    max_query_len: int
    max_seq_len: int

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def num_prefills(self) -> int:
        return self.num_seqs - self.num_decodes
