"""A fake AsyncLLM: the interface the server programs against, with a scripted reply instead of a model.

It behaves like the engine where the server depends on it: one chunk per byte token (so multi-byte
characters arrive as an empty chunk then the character), stop strings cut the text, `max_tokens`
ends with "length", logprobs come per token when asked, errors come before the first chunk, and
closing the stream early counts as an abort. It records every request so tests can check what the
server asked for.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamarun.config import ModelConfig
from llamarun.engine.llm_engine import EngineMetrics
from llamarun.engine.stats import RequestStats
from llamarun.errors import DoesNotFitError, LlamarunError
from llamarun.llm.text_stream import StreamChunk, TokenLogprob
from llamarun.sampling.params import SamplingParams
from llamarun.text.tokenizer import Tokenizer

DEFAULT_REPLY = "Hello! Café au lait, s'il vous plaît."
BOS, EOS = 256, 257


class ByteTokenizer(Tokenizer):
    """One token per UTF-8 byte, plus bos and eos."""

    vocab_size = 258
    bos_id = BOS
    eos_id = EOS
    special_ids = frozenset({BOS, EOS})
    add_bos = True

    def encode(self, text: str, *, add_bos: bool = False, allow_special: bool = True) -> list[int]:
        return ([BOS] if add_bos else []) + list(text.encode())

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return b"".join(self.token_bytes(i) for i in ids if not (skip_special and i >= 256)).decode(
            errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        if token_id == BOS:
            return b"<s>"
        if token_id == EOS:
            return b"</s>"
        return bytes([token_id])

    def token_to_id(self, token: str) -> int | None:
        return {"<s>": BOS, "</s>": EOS}.get(token)


@dataclass
class FakeCheckpoint:
    format: str = "gguf"
    quantization: str = "Q4_1"
    chat_template: str = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"
    path: Path = Path("/fake/model.gguf")


@dataclass
class Call:
    """One request the fake received."""

    prompt_ids: list[int]
    params: SamplingParams
    request_id: str | None
    finish_reason: str | None = None
    aborted: bool = False


@dataclass
class FakeAsyncLLM:
    """Implements the AsyncLLM interface; `reply`, `token_delay` and `fail_*` script its behaviour."""

    name: str
    context_length: int = 512
    reply: str = DEFAULT_REPLY
    token_delay: float = 0.0
    memory_bytes: int = 100_000_000
    load_seconds: float = 0.01
    fail_before_first: Exception | None = None
    fail_after_tokens: int | None = None
    device: str = "cpu"
    calls: list[Call] = field(default_factory=list)
    messages_seen: list[Any] = field(default_factory=list)
    running: int = 0
    shut_down: bool = False
    _last_prompt: list[int] = field(default_factory=list)
    _finished: int = 0
    _generated: int = 0
    _queries: int = 0
    _hits: int = 0

    def __post_init__(self) -> None:
        self.config = ModelConfig(vocab_size=258, hidden_size=64, intermediate_size=128, num_layers=2,
                                  num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=8192)
        self.checkpoint = FakeCheckpoint()
        self.tokenizer = ByteTokenizer()

    def chat_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        self.messages_seen.append((messages, tools))
        if any(m.get("content") == "BREAK THE TEMPLATE" for m in messages):
            raise ValueError("conversation roles must alternate user/assistant")
        text = "".join(f"<|{m['role']}|>{m.get('content', '')}\n" for m in messages) + "<|assistant|>"
        return self.tokenizer.encode(text, add_bos=True)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_bos=True)

    def reply_for(self, params: SamplingParams) -> str:
        return self.reply if params.seed is None else f"{self.reply} [seed {params.seed}]"

    async def stream(self, prompt_ids: list[int], params: SamplingParams,
                     request_id: str | None = None) -> AsyncIterator[StreamChunk]:
        t0 = time.perf_counter()
        call = Call(list(prompt_ids), params, request_id)
        self.calls.append(call)
        if self.shut_down:
            raise LlamarunError("the model was shut down")
        if len(prompt_ids) >= self.context_length:
            raise LlamarunError(f"the prompt has {len(prompt_ids)} tokens, but the context holds "
                                f"{self.context_length}", "shorten the prompt")
        if self.fail_before_first is not None:
            raise self.fail_before_first
        text, reason = self.reply_for(params), "stop"
        for s in params.stop:
            if s in text:
                text = text[:text.index(s)]
        tokens = list(text.encode())
        if params.max_tokens is not None and len(tokens) >= params.max_tokens:
            tokens, reason = tokens[:params.max_tokens], "length"
        cached = 0
        while cached < min(len(prompt_ids), len(self._last_prompt)) and \
                prompt_ids[cached] == self._last_prompt[cached]:
            cached += 1
        self._last_prompt = list(prompt_ids)
        self._queries += len(prompt_ids) // 16
        self._hits += cached // 16
        stats = RequestStats(prompt_tokens=len(prompt_ids), cached_tokens=cached, prompt_seconds=0.001)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.running += 1
        done = False
        try:
            for i, tok in enumerate(tokens):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                else:
                    await asyncio.sleep(0)
                if self.fail_after_tokens is not None and i >= self.fail_after_tokens:
                    raise RuntimeError("the fake engine broke mid-stream")
                if stats.first_token_seconds is None:
                    stats.first_token_seconds = time.perf_counter() - t0
                stats.generated_tokens += 1
                self._generated += 1
                last = i == len(tokens) - 1 and reason == "length"
                if last:
                    stats.decode_seconds = time.perf_counter() - t0
                    done = True
                    call.finish_reason = reason
                yield StreamChunk(decoder.decode(bytes([tok])), [tok], self._logprobs(tok, i, params), last,
                                  reason if last else None, stats if last else None)
                if last:
                    return
            stats.decode_seconds = time.perf_counter() - t0
            done = True
            call.finish_reason = reason
            yield StreamChunk(decoder.decode(b"", final=True), [], [], True, reason, stats)  # eos
        finally:
            self.running -= 1
            if done:
                self._finished += 1
            else:
                call.aborted = True

    def _logprobs(self, tok: int, i: int, params: SamplingParams) -> list[TokenLogprob]:
        if params.logprobs is None:
            return []
        lp = -0.25 * (i % 4) - 0.05
        others = [t for t in range(97, 97 + params.logprobs) if t != tok]
        alternatives = [(t, chr(t), lp - 1.0 - k) for k, t in enumerate(others)]
        top = [(tok, chr(tok) if tok < 128 else "", lp), *alternatives][:params.logprobs]
        return [TokenLogprob(tok, chr(tok) if tok < 128 else "", lp, top)]

    def metrics(self) -> EngineMetrics:
        return EngineMetrics(running=self.running, waiting=0, kv_blocks_total=64,
                             kv_blocks_used=2 * self.running,
                             prefix_queries=self._queries, prefix_hits=self._hits,
                             requests_finished=self._finished, generated_tokens=self._generated,
                             preemptions=0)

    def shutdown(self) -> None:
        self.shut_down = True


class FakeLoader:
    """The manager's loader: makes FakeAsyncLLMs and remembers them; `too_big` names refuse to fit."""

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults
        self.instances: list[FakeAsyncLLM] = []
        self.too_big: set[str] = set()
        self.load_delay = 0.0
        self.per_model: dict[str, dict[str, Any]] = {}

    def __call__(self, name: str, context_length: int | None) -> FakeAsyncLLM:
        if self.load_delay:
            time.sleep(self.load_delay)
        if name in self.too_big and any(not m.shut_down for m in self.instances):
            raise DoesNotFitError(f"{name} does not fit next to the loaded models")
        kwargs = {**self.defaults, **self.per_model.get(name, {})}
        if context_length is not None:
            kwargs["context_length"] = min(context_length, 8192)
        llm = FakeAsyncLLM(name, **kwargs)
        self.instances.append(llm)
        return llm

    def live(self, name: str | None = None) -> list[FakeAsyncLLM]:
        return [m for m in self.instances if not m.shut_down and (name is None or m.name == name)]

    def last(self, name: str | None = None) -> FakeAsyncLLM:
        return [m for m in self.instances if name is None or m.name == name][-1]
