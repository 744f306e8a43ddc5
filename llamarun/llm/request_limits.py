"""Per-request limits that stop one small request from becoming a flood of engine work.

A 1 kB `/v1/completions` body with 100 prompts and n=16 is 1,600 generations; a list of long
prompts is millions of prompt tokens. Both are refused with a 400 before any engine work, so one
client cannot make every other one wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llamarun.errors import RequestError

if TYPE_CHECKING:
    from llamarun.llm.chat_service import ChatRequest

DEFAULT_MAX_GENERATIONS = 64
DEFAULT_MAX_PROMPT_TOKENS = 262_144  # 64 prompts of a 4k context
# The HTTP body cap (server/request_body.py). A 128k-token prompt is ~512 kB of English and a few MB as
# a JSON token-id list or escaped non-Latin text; 8 MiB holds that while bounding what one body can cost.
DEFAULT_MAX_BODY_BYTES = 8 * 2**20
DEFAULT_MAX_QUEUE = 512  # requests waiting or running per server (server/admission.py); Ollama's OLLAMA_MAX_QUEUE


@dataclass(frozen=True)
class RequestLimits:
    """The most generations (prompts x n) and prompt tokens (all prompts together) one request may ask for."""

    max_generations: int = DEFAULT_MAX_GENERATIONS
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS

    def __post_init__(self) -> None:
        if self.max_generations < 1 or self.max_prompt_tokens < 1:
            raise ValueError("request limits must be at least 1")

    def check_generations(self, req: ChatRequest) -> None:
        """Before the model is touched: prompts x n must stay within max_generations."""
        prompts = 1 if req.prompts is None else len(req.prompts)
        total = prompts * req.n
        if total > self.max_generations:
            raise RequestError(f"this request asks for {total} generations ({prompts} prompt"
                               f"{'s' if prompts != 1 else ''} x n={req.n}), more than the server's limit of "
                               f"{self.max_generations} per request; send fewer prompts or a smaller n",
                               param="n" if prompts == 1 else "prompt", code="too_many_generations")

    def check_prompt_tokens(self, prompts: Sequence[Sequence[int]], param: str) -> None:
        """After tokenizing, before any engine work: all prompts together within max_prompt_tokens."""
        total = sum(len(ids) for ids in prompts)
        if total > self.max_prompt_tokens:
            raise RequestError(f"the prompts of this request hold {total} tokens together, more than the "
                               f"server's limit of {self.max_prompt_tokens} per request; split the request",
                               param=param, code="too_many_prompt_tokens")
