"""The weight records `gemv_w4a8.c` streams, made from an `Int4Weight` once and undone exactly for `layout()`.

Per output row and block of 32 inputs, 16 bytes of nibbles (byte i holds input i in its low nibble and input
i + 16 in its high one, so a mask and a shift give the 32 values) and the block's scale and minimum as
float32. A group of 64 or 128 repeats its scale and minimum in each of its blocks: one record format for
every group size, and the float32 copies of float16/bfloat16 values are exact, so going back to the layout
loses nothing.

Rows go in tiles of four, stored block by block ([tiles, blocks, 96]): the four rows' nibbles (64 bytes), then
their four scales and four minimums. The kernel reads four rows at a time, and this way they are one
sequential stream in memory (four short streams measured slower from memory on the default model's small
matrices); two rows' nibbles are one 32-byte load and the four scales one 16-byte load, which the kernel's
two-rows-a-vector arithmetic wants. The last tile is padded with zero rows.
"""

from __future__ import annotations

import torch

from llamarun.quant.layouts import Int4Weight, pack_nibbles, unpack_nibbles

BLOCK = 32
TILE = 4  # rows stored together (w4a8.h's TILE)
TILE_BYTES = TILE * 24  # per tile and block: 4 x 16 bytes of nibbles, 4 float32 scales, 4 float32 minimums


def fits(n: int, k: int, group_size: int) -> bool:
    """Whether the kernel takes this shape: inputs in whole blocks, each block inside one group."""
    return n > 0 and k > 0 and k % BLOCK == 0 and group_size % BLOCK == 0


def to_records(w: Int4Weight) -> torch.Tensor:
    """[N, K // 2] nibbles + [N, K // G] scales and mins -> [ceil(N / 4), K // 32, 96] uint8 tiles."""
    n, k = w.shape
    if not fits(n, k, w.group_size):
        raise ValueError(f"gemv_w4a8 takes K and the group size in multiples of {BLOCK}, not K={k}, "
                         f"G={w.group_size}")
    blocks, repeat = k // BLOCK, w.group_size // BLOCK
    tiles = -(-n // TILE)
    q = unpack_nibbles(w.qweight.cpu()).view(n, blocks, 2, 16)  # [N, blocks, halves, 16]
    nibbles = torch.zeros(tiles * TILE, blocks, 16, dtype=torch.uint8)
    nibbles[:n] = q[:, :, 0] | (q[:, :, 1] << 4)  # [N, blocks, 16]
    floats = torch.zeros(2, tiles * TILE, blocks, dtype=torch.float32)  # scales, mins; padding rows zero
    floats[0, :n] = w.scales.float().repeat_interleave(repeat, dim=1)  # [N, blocks]
    floats[1, :n] = w.mins.float().repeat_interleave(repeat, dim=1)
    nibbles = nibbles.view(tiles, TILE, blocks, 16).transpose(1, 2).reshape(tiles, blocks, TILE * 16)
    floats = floats.view(2, tiles, TILE, blocks).permute(1, 3, 0, 2).contiguous()  # [tiles, blocks, 2, 4]
    return torch.cat((nibbles, floats.view(tiles, blocks, 2 * TILE).view(torch.uint8)), dim=-1).contiguous()


def qweight_of(records: torch.Tensor, n: int) -> torch.Tensor:
    """The `Int4Weight.qweight` [n, K // 2] the records were made from (scales and mins are kept beside them)."""
    tiles, blocks, _ = records.shape
    nibbles = records[:, :, : TILE * 16].reshape(tiles, blocks, TILE, 16).transpose(1, 2)  # [tiles, 4, blocks, 16]
    nibbles = nibbles.reshape(tiles * TILE, blocks, 16)[:n]  # [n, blocks, 16]
    q = torch.cat((nibbles & 15, nibbles >> 4), dim=-1)  # [N, blocks, 32] in input order
    return pack_nibbles(q.reshape(n, blocks * BLOCK))
