"""The memory plan: will these weights plus a KV cache of this many tokens fit on this device?

Checked before loading, so a model that cannot fit fails in a second with advice (a shorter context,
a smaller quantization of the same model) instead of minutes later with an out-of-memory kill.
torch is imported only to ask a GPU for its free memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llamarun.config import ModelConfig
from llamarun.errors import DoesNotFitError

MiB = 1024**2
GB = 1000**3
# Tokens a prefill chunk holds at once: activation memory scales with this, not with the context.
PREFILL_CHUNK_TOKENS = 512
# Fixed cost: allocator slack, the CUDA context (~500 MiB) or the Python/torch runtime on CPU.
_BASE_OVERHEAD = {"cuda": 768 * MiB, "cpu": 256 * MiB}


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes each part needs, and what the device has (None when it cannot be measured)."""

    device: str
    context_length: int
    weight_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    available_bytes: int | None
    kv_bytes_per_token: int
    max_context: int
    model_name: str | None = None
    smaller: tuple[tuple[str, int], ...] = ()  # smaller downloads of the same model: (ref, bytes)
    scratch_bytes: int = 0  # the embeddings' throwaway cache and hidden states for one input

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes + self.overhead_bytes + self.scratch_bytes

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.total_bytes <= self.available_bytes

    def largest_context(self) -> int:
        """The largest round context (a multiple of 1024, or of 128 when short) that fits; 0 if none."""
        if self.available_bytes is None:
            return self.max_context
        # The scratch is kept at its planned size: conservative, as it would shrink with the context.
        spare = self.available_bytes - self.weight_bytes - self.overhead_bytes - self.scratch_bytes
        tokens = min(spare // max(self.kv_bytes_per_token, 1), self.max_context) if spare > 0 else 0
        step = 1024 if tokens >= 1024 else 128
        return int(tokens // step * step)

    def check(self) -> MemoryPlan:
        """Return self if it fits; else raise DoesNotFitError naming what would fit."""
        if self.fits:
            return self
        assert self.available_bytes is not None
        scratch = f" + embedding cache {_gb(self.scratch_bytes)}" if self.scratch_bytes else ""
        need = (f"needs {_gb(self.total_bytes)} (weights {_gb(self.weight_bytes)} + KV cache "
                f"{_gb(self.kv_cache_bytes)} for {self.context_length} tokens + overhead "
                f"{_gb(self.overhead_bytes)}{scratch}) but {self.device} has {_gb(self.available_bytes)} available")
        what = f"{self.model_name} " if self.model_name else "the model "
        options = []
        ctx = self.largest_context()
        if ctx >= 128 and ctx < self.context_length:
            options.append(f"a context of {ctx} tokens would fit")
        options += [f"the smaller {ref} ({_gb(size)}) would fit" for ref, size in self._smaller_variants()]
        if not options:
            options.append("use a machine with more memory, more GPUs (tensor parallel), or a smaller model")
        raise DoesNotFitError(f"{what}{need}", "; or ".join(options))

    def _smaller_variants(self) -> list[tuple[str, int]]:
        """The first two of `smaller` that would fit at some useful context (>= 2048 tokens)."""
        if self.available_bytes is None:
            return []
        min_kv = min(self.context_length, 2048) * self.kv_bytes_per_token
        room = self.available_bytes - self.overhead_bytes - self.scratch_bytes - min_kv
        return [(ref, size) for ref, size in self.smaller if size <= room][:2]


def plan_memory(config: ModelConfig, weight_bytes: int, context_length: int, *, device: str = "cpu",
                kv_bytes_per_element: int = 2, available_bytes: int | None = None,
                model_name: str | None = None, smaller: Sequence[tuple[str, int]] = (),
                scratch_tokens: int = 0) -> MemoryPlan:
    """Plan memory for `config` with `weight_bytes` of weights and a KV cache of `context_length` tokens.

    `available_bytes` defaults to what the device reports (MemAvailable on CPU, free memory on CUDA).
    `model_name` names the model in the advice; `smaller` lists (ref, bytes) of smaller quantizations of
    it, largest first (the store's catalog knows them), so the advice can name one that fits.
    `scratch_tokens`: the longest input an embedding runs (one context): its throwaway KV cache
    (llm/embeddings.py, beside the engine's) and its float32 hidden states are counted too.
    """
    per_token = config.kv_bytes_per_token(kv_bytes_per_element)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    # Activations of one prefill chunk in float32: residual + q/k/v/o + MLP (gate, up) + logits.
    h, i = config.hidden_size, config.intermediate_size
    activations = PREFILL_CHUNK_TOKENS * 4 * (6 * h + 3 * i + config.vocab_size)
    overhead = _BASE_OVERHEAD[kind] + activations
    if available_bytes is None:
        available_bytes = available_memory(device)
    return MemoryPlan(device=device, context_length=context_length, weight_bytes=weight_bytes,
                      kv_cache_bytes=per_token * context_length, overhead_bytes=overhead,
                      available_bytes=available_bytes, kv_bytes_per_token=per_token,
                      max_context=config.max_position_embeddings, model_name=model_name,
                      smaller=tuple(smaller), scratch_bytes=scratch_tokens * (per_token + 4 * h))


def available_memory(device: str = "cpu") -> int | None:
    """Free bytes on `device`: MemAvailable for CPU, cudaMemGetInfo for `cuda[:N]`; None if unknown."""
    if device.startswith("cuda"):
        import torch  # only here: planning for CPU must not load torch

        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        return int(free)
    if device != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts in kB
    except OSError:
        pass
    return None


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= GB / 10 else f"{n / 1000**2:.0f} MB"
