"""Token outputs -> text chunks: incremental detokenization, stop strings, and logprob texts."""

from __future__ import annotations

from dataclasses import dataclass, field

from llamarun.engine.llm_engine import EngineOutput
from llamarun.engine.stats import RequestStats
from llamarun.sampling.params import SamplingParams
from llamarun.sampling.stop import StopStringMatcher
from llamarun.text.detokenizer import IncrementalDetokenizer
from llamarun.text.tokenizer import Tokenizer


@dataclass
class TokenLogprob:
    token_id: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (id, text, logprob), best first


@dataclass
class StreamChunk:
    """New text of one request since the last chunk; the last chunk has `finished` and `stats`."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finished: bool = False
    finish_reason: str | None = None
    stats: RequestStats | None = None


class TextStream:
    """Per-request state that turns EngineOutputs into StreamChunks."""

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams) -> None:
        self.tokenizer, self.params = tokenizer, params
        self.detok = IncrementalDetokenizer(tokenizer, skip_special=True)
        self.stops = StopStringMatcher(params.stop)
        self.stopped = False  # a stop string was hit: the caller must abort the engine request

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
        if out.stats is not None and self.stopped:
            out.stats.done_reason = "stop"
        return StreamChunk(text, ids, logprobs, finished, reason if finished else None, out.stats)
