"""The model config: one frozen dataclass, built from whatever metadata the checkpoint carries.

Every checkpoint format describes the same Llama shape in its own words (HF `config.json`, GGUF
`llama.*` keys, Meta `params.json`, MLX `config.json`). Each has a constructor here, and each is
checked against the tensors later by the loader. No torch import: `llamarun show` uses this.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from llamarun.errors import ConfigMismatchError, UnsupportedError

_SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM"}
_SUPPORTED_MODEL_TYPES = {"llama"}


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 `llama3` frequency scaling: long wavelengths are slowed by `factor`."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def scale(self, inv_freq: list[float]) -> list[float]:
        """Apply the scaling to base inverse frequencies (pure Python, the torch code mirrors it)."""
        low_wavelen = self.original_max_position_embeddings / self.low_freq_factor
        high_wavelen = self.original_max_position_embeddings / self.high_freq_factor
        out = []
        for f in inv_freq:
            wavelen = 2 * math.pi / f
            if wavelen < high_wavelen:
                out.append(f)
            elif wavelen > low_wavelen:
                out.append(f / self.factor)
            else:
                smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor) / (
                    self.high_freq_factor - self.low_freq_factor
                )
                out.append((1 - smooth) * f / self.factor + smooth * f)
        return out


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-family decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    # Explicit per-frequency divisors (GGUF `rope_freqs.weight`) when they match no known scaling.
    rope_freq_factors: tuple[float, ...] | None = None
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                raise ConfigMismatchError(f"model config has {name}={getattr(self, name)}, expected > 0")
        if self.num_heads % self.num_kv_heads:
            raise ConfigMismatchError(
                f"model config has {self.num_heads} attention heads, not a multiple of "
                f"{self.num_kv_heads} key/value heads"
            )
        if self.head_dim % 2:
            raise ConfigMismatchError(f"model config has odd head_dim={self.head_dim}; rotary needs it even")
        if self.rope_freq_factors is not None and len(self.rope_freq_factors) != self.head_dim // 2:
            raise ConfigMismatchError(
                f"rope frequency factors have {len(self.rope_freq_factors)} entries, "
                f"expected head_dim/2={self.head_dim // 2}"
            )

    @property
    def num_parameters(self) -> int:
        """Parameter count implied by the shape (embeddings counted once when tied)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else v * h
        return v * h + self.num_layers * per_layer + h + head

    def kv_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """Bytes of K and V cache one token needs across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ----- constructors, one per metadata dialect -----

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """From a Hugging Face (or MLX) `config.json`."""
        archs = set(cfg.get("architectures") or [])
        model_type = cfg.get("model_type")
        if not (archs & _SUPPORTED_ARCHITECTURES or model_type in _SUPPORTED_MODEL_TYPES):
            found = ", ".join(sorted(archs)) or model_type or "none"
            raise UnsupportedError(
                f"unsupported architecture '{found}'",
                "llamarun runs Llama-family models (LlamaForCausalLM)",
            )
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise UnsupportedError("checkpoint uses attention or MLP biases, which Llama models do not have")
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            return cls(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                rope_theta=float(cfg.get("rope_theta", 10000.0)),
                rope_scaling=_hf_rope_scaling(cfg.get("rope_scaling") or cfg.get("rope_parameters")),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            )
        except KeyError as err:
            raise ConfigMismatchError(f"config.json lacks the key {err}", "is this a complete checkpoint?") from None

    @classmethod
    def from_meta_params(cls, params: dict[str, Any], intermediate_size: int) -> ModelConfig:
        """From Meta's `params.json`; the FFN width is read off the tensors by the caller."""
        try:
            dim, heads = int(params["dim"]), int(params["n_heads"])
            return cls(
                vocab_size=int(params["vocab_size"]),
                hidden_size=dim,
                intermediate_size=intermediate_size,
                num_layers=int(params["n_layers"]),
                num_heads=heads,
                num_kv_heads=int(params.get("n_kv_heads") or heads),
                head_dim=dim // heads,
                rms_norm_eps=float(params.get("norm_eps", 1e-5)),
                rope_theta=float(params.get("rope_theta", 500000.0)),
                rope_scaling=RopeScaling() if params.get("use_scaled_rope") else None,
                max_position_embeddings=131072 if params.get("use_scaled_rope") else 8192,
                tie_word_embeddings=False,
            )
        except KeyError as err:
            raise ConfigMismatchError(f"params.json lacks the key {err}", "is this a Meta Llama checkpoint?") from None

    @classmethod
    def from_gguf(cls, meta: dict[str, Any], *, vocab_size: int, tied: bool,
                  rope_freq_factors: list[float] | None) -> ModelConfig:
        """From GGUF `llama.*` metadata keys."""
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise UnsupportedError(f"unsupported GGUF architecture '{arch}'", "llamarun runs 'llama' GGUF files")

        def key(name: str, default: Any = None) -> Any:
            value = meta.get(f"llama.{name}", default)
            if value is None:
                raise ConfigMismatchError(f"GGUF metadata lacks llama.{name}", "the file may be truncated")
            return value

        hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
        head_dim = int(meta.get("llama.attention.key_length") or meta.get("llama.rope.dimension_count")
                       or hidden // heads)
        theta = float(key("rope.freq_base", 10000.0))
        scaling, factors = None, None
        if rope_freq_factors is not None:
            scaling = _match_llama3_scaling(rope_freq_factors, theta, head_dim)
            factors = None if scaling else tuple(float(x) for x in rope_freq_factors)
        return cls(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=int(key("feed_forward_length")),
            num_layers=int(key("block_count")),
            num_heads=heads,
            num_kv_heads=int(key("attention.head_count_kv", heads)),
            head_dim=head_dim,
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=theta,
            rope_scaling=scaling,
            rope_freq_factors=factors,
            max_position_embeddings=int(key("context_length", 8192)),
            tie_word_embeddings=tied,
        )


def _hf_rope_scaling(rs: dict[str, Any] | None) -> RopeScaling | None:
    if not rs:
        return None
    kind = rs.get("rope_type") or rs.get("type")
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise UnsupportedError(f"unsupported rope scaling '{kind}'", "llamarun supports the Llama 3.1 'llama3' type")
    return RopeScaling(
        factor=float(rs["factor"]),
        low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
        high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(rs.get("original_max_position_embeddings", 8192)),
    )


def base_inv_freq(theta: float, head_dim: int) -> list[float]:
    """Unscaled rotary inverse frequencies, one per pair of dimensions."""
    return [1.0 / theta ** (2 * i / head_dim) for i in range(head_dim // 2)]


def _match_llama3_scaling(factors: list[float], theta: float, head_dim: int) -> RopeScaling | None:
    """GGUF stores llama3 scaling as divisors; recognise the standard settings so configs compare equal."""
    base = base_inv_freq(theta, head_dim)
    for factor in (8.0, 16.0, 32.0, 4.0, 2.0):
        candidate = RopeScaling(factor=factor)
        scaled = candidate.scale(base)
        if all(math.isclose(b / s, float(f), rel_tol=1e-4) for b, s, f in zip(base, scaled, factors, strict=False)):
            return candidate
    return None
