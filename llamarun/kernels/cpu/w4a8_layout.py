"""The weight records `gemv_w4a8.c` streams, made from an `Int4Weight` once and undone exactly for `layout()`.

Per output row and block of 32 inputs, 24 bytes: 16 bytes of nibbles (byte i holds input i in its low nibble
and input i + 16 in its high one, so the kernel gets the 32 values in order from one load, a shift and a
mask), then the block's scale and minimum as float32. A group of 64 or 128 repeats its scale and minimum in
each of its blocks: one record format for every group size, and the float32 copies of float16/bfloat16
values are exact, so going back to the layout loses nothing.

Rows go in tiles of four whose records interleave block by block ([tiles, blocks, 4, 24]): the kernel reads
four rows at a time, and this way they are one sequential stream in memory (four short streams measured
slower from memory on the default model's small matrices). The last tile is padded with zero rows.
"""

from __future__ import annotations

import torch

from llamarun.quant.layouts import Int4Weight, pack_nibbles, unpack_nibbles

BLOCK = 32
RECORD = 24  # bytes per row and block: 16 of nibbles, a float32 scale, a float32 minimum
TILE = 4  # rows whose records interleave (gemv_w4a8.c's TILE)


def fits(n: int, k: int, group_size: int) -> bool:
    """Whether the kernel takes this shape: inputs in whole blocks, each block inside one group."""
    return n > 0 and k > 0 and k % BLOCK == 0 and group_size % BLOCK == 0


def to_records(w: Int4Weight) -> torch.Tensor:
    """[N, K // 2] nibbles + [N, K // G] scales and mins -> [ceil(N / 4), K // 32, 4, 24] uint8 records."""
    n, k = w.shape
    if not fits(n, k, w.group_size):
        raise ValueError(f"gemv_w4a8 takes K and the group size in multiples of {BLOCK}, not K={k}, "
                         f"G={w.group_size}")
    blocks, repeat = k // BLOCK, w.group_size // BLOCK
    q = unpack_nibbles(w.qweight.cpu()).view(n, blocks, 2, 16)  # [N, blocks, halves, 16]
    nibbles = q[:, :, 0] | (q[:, :, 1] << 4)  # [N, blocks, 16]
    scales = w.scales.float().repeat_interleave(repeat, dim=1)  # [N, blocks]
    mins = w.mins.float().repeat_interleave(repeat, dim=1)  # [N, blocks]
    floats = torch.stack((scales, mins), dim=-1).contiguous().view(torch.uint8)  # [N, blocks, 8]
    rows = torch.cat((nibbles, floats), dim=-1)  # [N, blocks, 24]
    tiles = -(-n // TILE)
    padded = torch.zeros(tiles * TILE, blocks, RECORD, dtype=torch.uint8)
    padded[:n] = rows
    return padded.view(tiles, TILE, blocks, RECORD).transpose(1, 2).contiguous()  # [tiles, blocks, 4, 24]


def qweight_of(records: torch.Tensor, n: int) -> torch.Tensor:
    """The `Int4Weight.qweight` [n, K // 2] the records were made from (scales and mins are kept beside them)."""
    tiles, blocks, _, _ = records.shape
    rows = records.transpose(1, 2).reshape(tiles * TILE, blocks, RECORD)[:n]  # [n, blocks, 24]
    nibbles = rows[:, :, :16]  # [n, blocks, 16]
    q = torch.cat((nibbles & 15, nibbles >> 4), dim=-1)  # [N, blocks, 32] in input order
    return pack_nibbles(q.reshape(n, blocks * BLOCK))
