"""Token outputs -> text chunks: incremental detokenization, stop strings, logprob texts, finish reason.

This is the one place where a request's text, its finish reason and its final stats are decided:
`text_chunks` drives a model's token stream through a `TextStream`, and when a stop string ends the
text before the engine finished, it cancels the engine request and reports the cancelled request's
stats with the reason "stop". Every front end (server, `LLM`, `AsyncLLM.stream`) goes through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llamarun.chat.messages import ToolCall
from llamarun.engine.stats import RequestStats
from llamarun.sampling.params import SamplingParams
from llamarun.sampling.stop import StopStringMatcher
from llamarun.text.detokenizer import IncrementalDetokenizer
from llamarun.text.tokenizer import Tokenizer

if TYPE_CHECKING:  # annotations only: no torch import for the server's text path
    from llamarun.engine.llm_engine import EngineOutput
    from llamarun.llm.served import TokenStream


@dataclass
class TokenLogprob:
    token_id: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (id, text, logprob), best first


@dataclass
class StreamChunk:
    """New text of one request since the last chunk; the last chunk has `finished` and `stats`, and the
    tool calls the reply made (llm/tool_stage.py fills them in)."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finished: bool = False
    finish_reason: str | None = None
    stats: RequestStats | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class Completion:
    """A whole generation, collected: its text, token ids, logprobs, finish reason and statistics."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stats: RequestStats = field(default_factory=RequestStats)
    tool_calls: list[ToolCall] = field(default_factory=list)

    def add(self, chunk: StreamChunk) -> None:
        self.text += chunk.text
        self.tool_calls += chunk.tool_calls
        self.token_ids += chunk.token_ids
        self.logprobs += chunk.logprobs
        if chunk.finished:
            self.finish_reason = chunk.finish_reason
            self.stats = chunk.stats or self.stats


class TextStream:
    """Per-request state that turns EngineOutputs into StreamChunks."""

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams) -> None:
        self.tokenizer, self.params = tokenizer, params
        self.detok = IncrementalDetokenizer(tokenizer, skip_special=True)
        self.stops = StopStringMatcher(params.stop)
        self.stopped = False  # a stop string was hit: the engine request must be cancelled

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")

    def feed(self, out: EngineOutput) -> StreamChunk:
        ids = [t.token_id for t in out.new_tokens]
        text = ""
        for token_id in ids:
            emitted, hit = self.stops.push(self.detok.add(token_id))
            text += emitted
            if hit:
                self.stopped = True
                break
        finished = out.finished or self.stopped
        if finished and not self.stopped:
            tail, _ = self.stops.push(self.detok.flush())
            text += tail + self.stops.flush()
            self.stopped = self.stops.stopped  # a stop string confirmed only at the end
        logprobs = []
        if self.params.logprobs is not None:
            for t in out.new_tokens:
                top = [(i, self._piece(i), lp) for i, lp in (t.top or [])]
                logprobs.append(TokenLogprob(t.token_id, self._piece(t.token_id), t.logprob or 0.0, top))
        reason = "stop" if self.stopped else out.finish_reason
        return StreamChunk(text, ids, logprobs, finished, reason if finished else None, out.stats)


async def text_chunks(tokens: TokenStream, tokenizer: Tokenizer, params: SamplingParams
                      ) -> AsyncIterator[StreamChunk]:
    """Text chunks of one token stream; a stop string cancels the engine request and ends the text.

    Closing this iterator early (a client that left) cancels the engine request too.
    """
    text = TextStream(tokenizer, params)
    finished = False
    try:
        async for out in tokens:
            chunk = text.feed(out)
            if text.stopped and not out.finished:
                chunk.stats = await tokens.cancel()  # the stats as of the cut
            if chunk.finished and chunk.stats is not None:
                chunk.stats.done_reason = chunk.finish_reason or chunk.stats.done_reason
            finished = chunk.finished
            yield chunk
            if finished:
                return
    finally:
        if not finished:
            await tokens.cancel()
