"""Per-request timings, in the terms Ollama and the OpenAI usage block report, derived here once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestStats:
    """Counts and durations (seconds) of one request."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    generated_tokens: int = 0
    queue_seconds: float = 0.0  # arrival -> first scheduled
    prompt_seconds: float = 0.0  # first scheduled -> first token (prefill)
    decode_seconds: float = 0.0  # first token -> finish
    first_token_seconds: float = 0.0  # arrival -> first token (time to first token)
    done_reason: str = ""
    energy_joules: float | None = None  # GPU energy charged to this request (engine/energy.py); None: not metered

    @property
    def computed_prompt_tokens(self) -> int:
        """Prompt tokens the model ran (the cached ones were looked up, not computed)."""
        return self.prompt_tokens - self.cached_tokens

    @property
    def prompt_tokens_per_second(self) -> float:
        """Prefill speed: computed tokens over prompt_seconds (cached tokens took no prefill time)."""
        return self.computed_prompt_tokens / max(self.prompt_seconds, 1e-9)

    @property
    def decode_tokens_per_second(self) -> float:
        return self.generated_tokens / max(self.decode_seconds, 1e-9)

    @property
    def joules_per_token(self) -> float | None:
        """Energy per generated token (prompt processing included), when metered."""
        if self.energy_joules is None or not self.generated_tokens:
            return None
        return self.energy_joules / self.generated_tokens
