"""How linear weights are held (`--weights`): expanded to the compute dtype, or packed int8, and what that costs."""

from __future__ import annotations

from typing import Any

from llamarun.errors import LlamarunError

WEIGHT_MODES = ("auto", "exact", "int8")


def choose_weights(mode: str, ckpt: Any, device: str) -> str:
    """How linear weights are held: expanded to the compute dtype ("exact") or packed int8.

    "auto" packs on CPUs when the checkpoint is already quantized (GGUF, MLX): decoding is bound by
    memory traffic and per-op cost there, and int8 costs a quarter of float32's bytes for a deviation
    far below the file's own quantization error. Float checkpoints stay exact unless asked.
    """
    from llamarun.quant.int8_cpu import supported_here

    if mode not in WEIGHT_MODES:
        raise LlamarunError(f"unknown weights mode '{mode}'", f"choose one of {', '.join(WEIGHT_MODES)}")
    if mode == "auto":
        return "int8" if ckpt.is_quantized and supported_here(device) else "exact"
    if mode == "int8" and not supported_here(device):
        raise LlamarunError(f"int8 weights run on the CPU only, not on '{device}'", "use --weights exact")
    return mode


def weight_bytes(config: Any, mode: str, element: int) -> int:
    """Bytes the loaded weights take: linears at 1 byte per parameter when packed int8."""
    embed = config.vocab_size * config.hidden_size
    if mode == "exact":
        return config.num_parameters * element
    linears = config.num_parameters - embed - (0 if config.tie_word_embeddings else embed)
    return embed * element + linears + embed  # float embedding table + int8 linears + int8 head
