"""`LLM`: the blocking Python API and the CLI's way in: `LLM("smollm2:135m").chat([...])`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llamarun.engine.stats import RequestStats
from llamarun.llm.loading import load_model
from llamarun.llm.text_stream import StreamChunk, TextStream
from llamarun.sampling.params import SamplingParams


@dataclass
class Completion:
    """A finished generation: its text, token ids and statistics."""

    text: str
    token_ids: list[int]
    stats: RequestStats
    finish_reason: str | None


@dataclass
class TextIterator:
    """Iterate for text pieces as they are generated; `text`, `token_ids`, `stats` fill in as it goes."""

    chunks: Iterator[StreamChunk]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    stats: RequestStats = field(default_factory=RequestStats)
    finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        for chunk in self.chunks:
            self.text += chunk.text
            self.token_ids += chunk.token_ids
            if chunk.finished:
                self.stats, self.finish_reason = chunk.stats or self.stats, chunk.finish_reason
            if chunk.text:
                yield chunk.text

    def close(self) -> None:
        """Stop generating now (e.g. on Ctrl-C): the engine request is aborted and its blocks freed."""
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()

    def result(self) -> Completion:
        for _ in self:
            pass
        return Completion(self.text, self.token_ids, self.stats, self.finish_reason)


class LLM:
    """A loaded model answering one request at a time (the server uses AsyncLLM for many).

    model: a store name (`smollm2:135m`, `llama3.1:8b`) or a local path to any supported checkpoint.
    """

    def __init__(self, model: str, *, context_length: int | None = None, device: str | None = None,
                 dtype: torch.dtype | None = None, weights: str = "auto", progress: bool = False) -> None:
        # One conversation at a time: a KV cache of one context is enough, and the prefix cache
        # keeps the previous turns of a chat so the next turn only prefills what is new.
        self.loaded = load_model(model, context_length=context_length, device=device, dtype=dtype,
                                 weights=weights, kv_tokens=context_length, progress=progress)
        lm = self.loaded
        self.name, self.config, self.tokenizer, self.template = lm.name, lm.config, lm.tokenizer, lm.template
        self.stop_ids, self.device, self.weights = lm.stop_ids, lm.device, lm.weights
        self.context_length, self.load_seconds = lm.context_length, lm.load_seconds
        self.engine = lm.engine
        self._ids = itertools.count()

    def chat_ids(self, messages: Sequence[dict[str, Any]], tools: list[dict] | None = None) -> list[int]:
        return self.loaded.chat_ids(list(messages), tools)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.loaded.prompt_ids(prompt)

    def stream_ids(self, prompt_ids: list[int], params: SamplingParams | None = None) -> TextIterator:
        params = params or SamplingParams()
        request_id = f"sync-{next(self._ids)}"
        self.engine.add_request(prompt_ids, params, self.stop_ids, request_id)  # raises before any work
        return TextIterator(self._chunks(request_id, params))

    def stream_chat(self, messages: Sequence[dict[str, Any]], params: SamplingParams | None = None) -> TextIterator:
        return self.stream_ids(self.chat_ids(messages), params)

    def chat(self, messages: Sequence[dict[str, Any]], params: SamplingParams | None = None) -> Completion:
        return self.stream_chat(messages, params).result()

    def generate(self, prompt: str, params: SamplingParams | None = None) -> Completion:
        return self.stream_ids(self.prompt_ids(prompt), params).result()

    def _chunks(self, request_id: str, params: SamplingParams) -> Iterator[StreamChunk]:
        text = TextStream(self.tokenizer, params)
        try:
            while self.engine.has_unfinished:
                for out in self.engine.step():
                    if out.request_id != request_id:
                        continue
                    chunk = text.feed(out)
                    if text.stopped and not out.finished:
                        chunk.stats = self.engine.abort(request_id).stats
                        chunk.stats.done_reason = "stop"
                    yield chunk
                    if chunk.finished:
                        return
        finally:
            self.engine.abort(request_id)  # a no-op once finished; frees blocks if the caller stopped early
