"""The grammar mask of one step: packed int32 bits filled on the host for the rows with a grammar, one copy to
the logits' device, and the disallowed logits of those rows set to -inf there.

Bit j of word w in a row allows token 32 * w + j (the layout xgrammar and llguidance share). Rows without a
grammar are never touched, and a step where no row has one never gets here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from llamarun.structured.engine import GrammarMatcher, fill_masks

_BITS = torch.arange(32, dtype=torch.int32)  # [32]


class GrammarMasker:
    """Reusable host buffers for the packed mask; `apply` masks the grammar rows of a step's logits."""

    def __init__(self) -> None:
        self._host: Tensor | None = None  # [rows, words] int32, pinned when the logits live on a GPU
        self._bits: dict[torch.device, Tensor] = {}

    def apply(self, logits: Tensor, rows: Sequence[int], matchers: Sequence[GrammarMatcher]) -> Tensor:
        """`logits` [B, V] with rows `rows` (matcher i for row rows[i]) limited to what their grammar allows."""
        words = -(-logits.shape[1] // 32)
        host = self._buffer(len(rows), words, logits.device)[:len(rows)]  # [R, W]
        fill_masks(list(matchers), host)
        device_mask = host.to(logits.device, non_blocking=True)  # [R, W]; the step's one mask copy
        allowed = unpack_bits(device_mask, logits.shape[1], self._bits_on(logits.device))  # [R, V] bool
        if len(rows) == logits.shape[0]:
            return logits.masked_fill(~allowed, float("-inf"))
        idx = torch.tensor(list(rows), dtype=torch.long).to(logits.device, non_blocking=True)  # [R]
        masked = logits.index_select(0, idx).masked_fill(~allowed, float("-inf"))  # [R, V]
        return logits.index_copy(0, idx, masked)

    def _buffer(self, rows: int, words: int, device: torch.device) -> Tensor:
        host = self._host
        if host is None or host.shape[0] < rows or host.shape[1] != words:
            pinned = device.type == "cuda"
            host = self._host = torch.empty((max(rows, 8), words), dtype=torch.int32, pin_memory=pinned)
        return host

    def _bits_on(self, device: torch.device) -> Tensor:
        bits = self._bits.get(device)
        if bits is None:
            bits = self._bits[device] = _BITS.to(device)
        return bits


def unpack_bits(mask: Tensor, vocab: int, bits: Tensor = _BITS) -> Tensor:
    """Packed int32 words [R, W] -> bool [R, vocab] (token t allowed when bit t % 32 of word t // 32 is set)."""
    unpacked = (mask[:, :, None] >> bits.to(mask.device)) & 1  # [R, W, 32]; arithmetic shift keeps bit 31 right
    return unpacked.reshape(mask.shape[0], -1)[:, :vocab].bool()  # [R, V]
