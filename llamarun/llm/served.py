"""What the chat service and the server need of a loaded model, written down as Protocols.

The boundary is the token level: a model turns prompt ids into a stream of engine outputs. Templates,
text, stop strings and finish reasons live above it (text_stream.py, chat_service.py), so a test double
that fakes only the tokens runs the same text path as the real engine and cannot drift from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: the server imports no torch before a model loads
    from llamarun.chat.messages import ChatTemplate
    from llamarun.config import ModelConfig
    from llamarun.engine.llm_engine import EngineMetrics, EngineOutput
    from llamarun.engine.stats import RequestStats
    from llamarun.sampling.grammar_spec import GrammarSpec
    from llamarun.sampling.params import SamplingParams
    from llamarun.text.tokenizer import Tokenizer


class TokenStream(Protocol):
    """The engine outputs of one request, in order; the last one has `finished` set."""

    def __aiter__(self) -> AsyncIterator[EngineOutput]: ...

    async def cancel(self) -> RequestStats | None:
        """Abort the request if it still runs (freeing its KV blocks); its stats as of then. Idempotent."""
        ...


class ServedModel(Protocol):
    """A model loaded for serving: its text side, its token stream, and what the server reports of it."""

    name: str
    config: ModelConfig
    tokenizer: Tokenizer
    template: ChatTemplate
    context_length: int
    device: str
    format: str  # checkpoint format: gguf, hf, mlx, meta
    quantization: str  # as the file states it (Q4_1, bf16, ...)
    memory_bytes: int
    load_seconds: float

    def tokens(self, prompt_ids: list[int], params: SamplingParams, request_id: str, *,
               group: str | None = None) -> TokenStream:
        """Start generating; a prompt the engine refuses raises at the stream's first step.

        `group`: the client request this generation belongs to; the engine admits groups fairly."""
        ...

    async def embed(self, inputs: Sequence[str | Sequence[int]], *, truncate: bool = True,
                    dimensions: int | None = None) -> list[list[float]]:
        """One L2-normalized embedding per input, text or token ids (llm/embed_inputs.py checks them)."""
        ...

    def check_grammar(self, spec: GrammarSpec) -> None:
        """Compile `spec` for this model (cached for its requests); a RequestError names what cannot be enforced.
        Blocking (a nested schema takes tens of milliseconds): call it from a worker thread."""
        ...

    def metrics(self) -> EngineMetrics: ...

    def shutdown(self) -> None:
        """Abort what runs and release the model's engine."""
        ...
