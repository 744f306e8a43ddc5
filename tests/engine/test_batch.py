"""Packing a plain step into host arrays and AttentionMetadata: decodes first, rows and slots consistent."""

from __future__ import annotations

import pytest
import torch

from llamarun.engine.batch import model_inputs, pack_step
from llamarun.engine.step import ScheduledSeq, SchedulerOutput

BS = 4
STEP = SchedulerOutput(seqs=[
    ScheduledSeq("a", [10, 11, 12, 13, 14], 0, [3, 5], True),  # a whole prompt
    ScheduledSeq("b", [20], 6, [1, 0], True),  # a decode at position 6
    ScheduledSeq("c", [30, 31, 32], 4, [7, 2], False),  # a middle prefill chunk: nothing sampled
    ScheduledSeq("d", [40], 8, [4, 6, 9], True),  # a decode opening a new block
])


def test_pack_orders_decodes_first_and_maps_every_token_to_its_slot():
    batch = pack_step(STEP, BS)
    assert batch.num_decodes == 2
    assert batch.token_ids == [20, 40, 10, 11, 12, 13, 14, 30, 31, 32]
    assert batch.positions == [6, 8, 0, 1, 2, 3, 4, 4, 5, 6]
    assert batch.slot_mapping == [0 * BS + 2, 9 * BS + 0, 12, 13, 14, 15, 20, 8, 9, 10]
    assert batch.query_start == [0, 1, 2, 7, 10]
    assert batch.seq_lens == [7, 9, 5, 7]
    assert batch.block_tables == [[1, 0], [4, 6, 9], [3, 5], [7, 2]]
    assert batch.logits_rows == [0, 1, 6] and batch.sample_ids == ["b", "d", "a"]
    assert (batch.max_query_len, batch.max_seq_len) == (5, 9)


def test_model_inputs_match_the_host_arrays():
    batch = pack_step(STEP, BS)
    inputs = model_inputs(batch, torch.device("cpu"))
    meta = inputs.attention
    assert inputs.input_ids.tolist() == batch.token_ids and inputs.positions.tolist() == batch.positions
    assert inputs.logits_rows.tolist() == [0, 1, 6]
    assert meta.slot_mapping.dtype == torch.long and meta.slot_mapping.tolist() == batch.slot_mapping
    assert meta.query_start.dtype == torch.int32 and meta.query_start.tolist() == [0, 1, 2, 7, 10]
    assert meta.seq_lens.tolist() == [7, 9, 5, 7]
    assert meta.block_tables.dtype == torch.int32
    assert meta.block_tables.tolist() == [[1, 0, 0], [4, 6, 9], [3, 5, 0], [7, 2, 0]]
    assert (meta.num_decodes, meta.num_prefills, meta.max_query_len, meta.max_seq_len) == (2, 2, 5, 9)


def test_a_step_that_samples_nothing_has_no_logits_rows():
    step = SchedulerOutput(seqs=[ScheduledSeq("c", [30, 31, 32], 4, [7, 2], False)])
    inputs = model_inputs(pack_step(step, BS), torch.device("cpu"))
    assert inputs.logits_rows is None and inputs.attention.num_decodes == 0


def test_a_block_table_too_short_for_the_tokens_is_refused():
    step = SchedulerOutput(seqs=[ScheduledSeq("x", [1, 2], 3, [0], True)])
    with pytest.raises(ValueError, match="cannot hold 5 tokens"):
        pack_step(step, BS)
