"""A fake served model (llm/served.py's ServedModel) that scripts its tokens instead of running a model.

It fakes only the token level, like the engine: one byte token per step, `max_tokens` ends with
"length", an end token ends with "stop", logprobs come per token when asked, errors come before the
first token, and cancelling a stream counts as an abort. Everything above tokens (templates, text,
stop strings, finish reasons, stats) is the real code, so the server tests cannot drift from it. It
records every request so tests can check what the server asked for.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llamarun.chat.jinja_template import template_message
from llamarun.chat.messages import ChatTemplate, parse_messages
from llamarun.config import ModelConfig
from llamarun.engine.llm_engine import EngineMetrics, EngineOutput
from llamarun.engine.runner import SampledToken
from llamarun.engine.stats import RequestStats
from llamarun.errors import DoesNotFitError, LlamarunError
from llamarun.llm.embed_inputs import check_dimensions, embedding_ids
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams
from llamarun.structured.engine import compile_grammar
from llamarun.structured.vocab import GrammarVocab
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


class FakeTemplate(ChatTemplate):
    """`<|role|>content` lines; records what it saw, and breaks on a message saying BREAK THE TEMPLATE."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def render(self, messages, *, add_generation_prompt=True, tools=None) -> str:
        chat = parse_messages(messages)
        self.seen.append(([template_message(m) for m in chat], tools))
        if any(m.content == "BREAK THE TEMPLATE" for m in chat):
            raise ValueError("conversation roles must alternate user/assistant")
        return "".join(f"<|{m.role}|>{m.content}\n" for m in chat) + "<|assistant|>"

    def encode(self, messages, tokenizer, *, add_generation_prompt=True, tools=None) -> list[int]:
        return tokenizer.encode(self.render(messages, tools=tools), add_bos=True)


@dataclass
class Call:
    """One request the fake received."""

    prompt_ids: list[int]
    params: SamplingParams
    request_id: str | None
    finish_reason: str | None = None
    aborted: bool = False
    group: str | None = None  # the client request the engine would admit it with


@dataclass
class FakeAsyncLLM:
    """A ServedModel; `reply`, `token_delay` and `fail_*` script its behaviour; `script`, when set, writes the
    reply from the prompt's text (a tool-calling conversation: a call first, an answer after the result)."""

    name: str
    context_length: int = 512
    reply: str = DEFAULT_REPLY
    token_delay: float = 0.0
    memory_bytes: int = 100_000_000
    load_seconds: float = 0.01
    fail_before_first: Exception | None = None
    fail_after_tokens: int | None = None
    device: str = "cpu"
    joules_per_token: float | None = None  # set: the fake is a metered GPU (each token costs this much energy)
    format: str = "gguf"
    quantization: str = "Q4_1"
    script: Callable[[str], str] | None = None
    calls: list[Call] = field(default_factory=list)
    embedded: list[list[int]] = field(default_factory=list)
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
        self.tokenizer = ByteTokenizer()
        self.template = FakeTemplate()

    @property
    def messages_seen(self) -> list[Any]:
        return self.template.seen

    def chat_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """What the chat service sends for `messages` (for tests to compare against)."""
        return self.template.encode(messages, self.tokenizer, tools=tools)

    def check_grammar(self, spec: GrammarSpec) -> None:
        """The real compile against the byte vocabulary (the fake records grammars but does not enforce them)."""
        compile_grammar(GrammarVocab.from_tokenizer(self.tokenizer, [EOS], self.config.vocab_size), spec)

    def reply_for(self, params: SamplingParams, prompt_ids: Sequence[int] = ()) -> str:
        if self.script is not None:
            return self.script(self.tokenizer.decode(prompt_ids, skip_special=True))
        return self.reply if params.seed is None else f"{self.reply} [seed {params.seed}]"

    def tokens(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None, *,
               group: str | None = None) -> FakeTokens:
        return FakeTokens(self, Call(list(prompt_ids), params, request_id, group=group))

    def _logprobs(self, tok: int, i: int, params: SamplingParams) -> SampledToken:
        if params.logprobs is None:
            return SampledToken(tok)
        lp = -0.25 * (i % 4) - 0.05
        others = [t for t in range(97, 97 + params.logprobs) if t != tok]
        top = [(tok, lp), *((t, lp - 1.0 - k) for k, t in enumerate(others))][:params.logprobs]
        return SampledToken(tok, lp, top)

    async def embed(self, inputs: Sequence[str | Sequence[int]], *, truncate: bool = True,
                    dimensions: int | None = None) -> list[list[float]]:
        """Deterministic unit vectors from token counts (index = token id mod hidden size), through the real
        input checks; records each input's ids in `embedded`."""
        check_dimensions(dimensions, self.config.hidden_size)
        out = []
        for ids in embedding_ids(inputs, self.tokenizer, self.context_length, truncate=truncate):
            await asyncio.sleep(0)
            self.embedded.append(ids)
            out.append(fake_embedding(ids, self.config.hidden_size, dimensions))
        return out

    def metrics(self) -> EngineMetrics:
        return EngineMetrics(running=self.running, waiting=0, kv_blocks_total=64,
                             kv_blocks_used=2 * self.running,
                             prefix_queries=self._queries, prefix_hits=self._hits,
                             requests_finished=self._finished, generated_tokens=self._generated,
                             preemptions=0)

    def shutdown(self) -> None:
        self.shut_down = True


def fake_embedding(ids: Sequence[int], hidden: int, dimensions: int | None = None) -> list[float]:
    """The fake's embedding of `ids`: 1 + the count of each token id mod `hidden`, first `dimensions`, unit length."""
    vec = [1.0] * hidden
    for t in ids:
        vec[t % hidden] += 1.0
    vec = vec[:dimensions or hidden]
    norm = math.sqrt(math.fsum(x * x for x in vec))
    return [x / norm for x in vec]


class FakeTokens:
    """One request's scripted engine outputs (llm/served.py's TokenStream)."""

    def __init__(self, llm: FakeAsyncLLM, call: Call) -> None:
        self.llm, self.call = llm, call
        self.stats = RequestStats(prompt_tokens=len(call.prompt_ids), prompt_seconds=0.001)
        self.done = False
        self.started = False

    async def __aiter__(self):
        llm, call = self.llm, self.call
        llm.calls.append(call)
        t0 = time.perf_counter()
        await asyncio.sleep(0)
        if llm.shut_down:
            raise LlamarunError("the model was shut down")
        if len(call.prompt_ids) >= llm.context_length:
            raise LlamarunError(f"the prompt has {len(call.prompt_ids)} tokens, but the context holds "
                                f"{llm.context_length}", "shorten the prompt")
        if llm.fail_before_first is not None:
            raise llm.fail_before_first
        self._count_cached()
        tokens, limit = list(llm.reply_for(call.params, call.prompt_ids).encode()), call.params.max_tokens
        llm.running += 1
        self.started = True
        try:
            for i, tok in enumerate(tokens):
                await asyncio.sleep(llm.token_delay)
                if llm.fail_after_tokens is not None and i >= llm.fail_after_tokens:
                    raise RuntimeError("the fake engine broke mid-stream")
                if i == 0:
                    self.stats.first_token_seconds = time.perf_counter() - t0
                self.stats.generated_tokens += 1
                llm._generated += 1
                last = limit is not None and i + 1 >= limit
                out = EngineOutput(call.request_id or "", [llm._logprobs(tok, i, call.params)])
                if last:
                    self._finish("length", t0, out)
                yield out
                if last:
                    return
            out = EngineOutput(call.request_id or "")
            self._finish("stop", t0, out)  # the end token: not part of the text
            yield out
        finally:
            if not self.done:
                self._abort()

    def _count_cached(self) -> None:
        llm, prompt = self.llm, self.call.prompt_ids
        cached = 0
        while cached < min(len(prompt), len(llm._last_prompt)) and prompt[cached] == llm._last_prompt[cached]:
            cached += 1
        llm._last_prompt = list(prompt)
        llm._queries += len(prompt) // 16
        llm._hits += cached // 16
        self.stats.cached_tokens = cached

    def _finish(self, reason: str, t0: float, out: EngineOutput) -> None:
        self.stats.decode_seconds = time.perf_counter() - t0
        if self.llm.joules_per_token is not None:
            self.stats.energy_joules = self.llm.joules_per_token * self.stats.generated_tokens
        self.stats.done_reason = reason
        out.finished, out.finish_reason, out.stats = True, reason, self.stats
        self.call.finish_reason = reason
        self.done = True
        self.llm._finished += 1
        self.llm.running -= 1

    def _abort(self) -> None:
        if self.done:
            return
        self.done = True
        self.call.aborted = True
        if self.started:
            self.llm.running -= 1
        self.stats.done_reason = "abort"

    async def cancel(self) -> RequestStats | None:
        self._abort()
        return self.stats


class FakeLoader:
    """The manager's loader: makes FakeAsyncLLMs and remembers them; `too_big` names refuse to fit."""

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults
        self.instances: list[FakeAsyncLLM] = []
        self.too_big: set[str] = set()
        self.load_delay = 0.0
        self.per_model: dict[str, dict[str, Any]] = {}

    def __call__(self, target: Any, context_length: int | None) -> FakeAsyncLLM:
        name = getattr(target, "name", target)  # a ResolvedModel from the store's resolver, or a name
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
