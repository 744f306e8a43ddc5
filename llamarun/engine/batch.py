"""A step's model inputs: the plain SchedulerOutput packed into host arrays, then into tensors.

Packing order is decodes first (one query each), then prefill chunks, each group in scheduling
order: the order AttentionMetadata documents, so decode queries are the packed rows [0, num_decodes)
and a backend can treat them as one batch without an index. Host arrays are plain lists, so a GPU
runner can copy them into its persistent (graph-captured) buffers and the torch runner can make
tensors of them; `model_inputs` is the torch runner's way.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from llamarun.attention.metadata import AttentionMetadata
from llamarun.engine.step import ScheduledSeq, SchedulerOutput


@dataclass
class HostBatch:
    """One step packed on the host. T = tokens of the step, B = sequences, S = sequences that sample.

    token_ids / positions / slot_mapping [T]: each packed token, its position in its sequence, and the
        cache slot (block * block_size + offset) its K/V go to.
    query_start [B + 1]: sequence b owns packed rows [query_start[b], query_start[b + 1]).
    seq_lens [B]: tokens sequence b attends over (cached ones plus this step's).
    block_tables [B] rows of block ids, row b covering seq_lens[b] tokens (ragged; padded in tensors).
    num_decodes: sequences [0, num_decodes) have one query each.
    logits_rows [S]: packed rows whose logits are sampled, in packed order; sample_ids [S] their requests.
    """

    token_ids: list[int]
    positions: list[int]
    slot_mapping: list[int]
    query_start: list[int]
    seq_lens: list[int]
    block_tables: list[list[int]]
    num_decodes: int
    logits_rows: list[int]
    sample_ids: list[str]

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def max_query_len(self) -> int:
        return max((b - a for a, b in itertools.pairwise(self.query_start)), default=0)

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens, default=0)


def pack_step(step: SchedulerOutput, block_size: int) -> HostBatch:
    """Host arrays for `step`'s sequences, decodes first, then prefill chunks."""
    decodes = [s for s in step.seqs if len(s.token_ids) == 1]
    prefills = [s for s in step.seqs if len(s.token_ids) != 1]
    batch = HostBatch([], [], [], [0], [], [], len(decodes), [], [])
    for seq in decodes + prefills:
        _append(batch, seq, block_size)
    return batch


def _append(batch: HostBatch, seq: ScheduledSeq, bs: int) -> None:
    start, end, table = seq.start, seq.end, seq.block_table
    if -(-end // bs) > len(table):
        raise ValueError(f"request {seq.request_id!r}: {len(table)} blocks cannot hold {end} tokens")
    batch.token_ids.extend(seq.token_ids)
    if end - start == 1:  # a decode: skip the range machinery
        batch.positions.append(start)
        batch.slot_mapping.append(table[start // bs] * bs + start % bs)
    else:
        batch.positions.extend(range(start, end))
        batch.slot_mapping.extend(table[p // bs] * bs + p % bs for p in range(start, end))
    rows = len(batch.token_ids)
    batch.query_start.append(rows)
    batch.seq_lens.append(end)
    batch.block_tables.append(table)
    if seq.samples:
        batch.logits_rows.append(rows - 1)
        batch.sample_ids.append(seq.request_id)


@dataclass
class ModelInputs:
    """A packed step as tensors on the model's device: what the forward pass and attention read."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    logits_rows: torch.Tensor | None  # [S] int64, None when no sequence samples this step
    attention: AttentionMetadata


def model_inputs(batch: HostBatch, device: torch.device) -> ModelInputs:
    """Tensors for `batch` (block tables padded with block 0, which seq_lens keeps unread)."""
    width = max((len(t) for t in batch.block_tables), default=0)
    tables = [t + [0] * (width - len(t)) for t in batch.block_tables]
    metadata = AttentionMetadata(
        slot_mapping=torch.tensor(batch.slot_mapping, dtype=torch.long, device=device),  # [T]
        query_start=torch.tensor(batch.query_start, dtype=torch.int32, device=device),  # [B + 1]
        seq_lens=torch.tensor(batch.seq_lens, dtype=torch.int32, device=device),  # [B]
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device).view(len(tables), width),  # [B, W]
        num_decodes=batch.num_decodes,
        max_query_len=batch.max_query_len,
        max_seq_len=batch.max_seq_len,
    )
    rows = torch.tensor(batch.logits_rows, dtype=torch.long, device=device) if batch.logits_rows else None
    return ModelInputs(
        input_ids=torch.tensor(batch.token_ids, dtype=torch.long, device=device),  # [T]
        positions=torch.tensor(batch.positions, dtype=torch.long, device=device),  # [T]
        logits_rows=rows,
        attention=metadata,
    )
