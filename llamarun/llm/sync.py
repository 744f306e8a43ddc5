"""`LLM`: the blocking Python API and the CLI's way in: `LLM("smollm2:135m").chat([...])`.

A thin facade: one `AsyncLLM` and the `ChatService`, driven from a private event loop, so a blocking
call takes exactly the path a server request takes. Ctrl-C while a stream is being read cancels the
request in the engine (asyncio.Runner turns SIGINT into a cancellation of the running step).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from llamarun.chat.messages import Message, parse_messages
from llamarun.llm.async_llm import AsyncLLM
from llamarun.llm.chat_service import ChatRequest, ChatService, Reply
from llamarun.llm.model_settings import store_settings
from llamarun.llm.served import ServedModel
from llamarun.llm.text_stream import Completion
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams
from llamarun.store.home import ModelStore

T = TypeVar("T")
Format = GrammarSpec | str | dict[str, Any] | None  # structured output: "json", a JSON schema, a GrammarSpec


@dataclass(eq=False)
class _Held:
    """The one model an LLM holds, as a lease of the ModelSource protocol."""

    served: ServedModel
    load_seconds: float = 0.0


class SingleModel:
    """A ModelSource that always lends the same loaded model, whatever name is asked for."""

    def __init__(self, model: ServedModel) -> None:
        self.lease = _Held(model)

    async def acquire(self, name: str, *, num_ctx: int | None = None, keep_alive: float | None = None) -> _Held:
        return self.lease

    def release(self, lease: Any) -> None:
        pass


@dataclass(eq=False)
class TextIterator(Completion):
    """Iterate for text pieces as they are generated; the Completion fields fill in as it goes."""

    llm: LLM | None = None
    reply: Reply | None = None

    def __iter__(self) -> Iterator[str]:
        chunks = self.reply.chunks()
        try:
            while (item := self.llm._run(anext(chunks, None))) is not None:
                self.add(item[1])
                if item[1].text:
                    yield item[1].text
        finally:
            self.close()

    def close(self) -> None:
        """Stop generating now (e.g. on Ctrl-C): the engine request is aborted and its blocks freed."""
        if not self.reply.closed:
            self.llm._run(self.reply.close())
            self.llm.served.barrier()  # the abort has reached the engine when this returns

    def result(self) -> Completion:
        for _ in self:
            pass
        return Completion(self.text, self.token_ids, self.logprobs, self.finish_reason, self.stats)


class LLM:
    """A loaded model answering one request at a time (the server uses AsyncLLM and many at once).

    model: a store name (`smollm2:135m`, `llama3.1:8b`) or a local path to any supported checkpoint.
    """

    def __init__(self, model: str, *, context_length: int | None = None, device: str | None = None,
                 dtype: torch.dtype | None = None, weights: str = "auto", progress: bool = False) -> None:
        # One conversation at a time: a KV cache of one context is enough, and the prefix cache
        # keeps the previous turns of a chat so the next turn only prefills what is new.
        self.served = AsyncLLM(model, context_length=context_length, device=device, dtype=dtype, weights=weights,
                               max_kv_tokens=context_length, progress=progress)
        s = self.served
        self.name, self.config, self.tokenizer, self.template = s.name, s.config, s.tokenizer, s.template
        self.stop_ids, self.device, self.weights = s.stop_ids, s.device, s.weights
        self.context_length, self.load_seconds, self.engine = s.context_length, s.load_seconds, s.engine
        self.load_phases = s.load_phases
        # A created model (`llamarun create`) brings its system prompt, opening messages and template.
        self.service = ChatService(SingleModel(s), settings=store_settings(ModelStore()))
        self._runner = asyncio.Runner()

    def _run(self, step: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await step

        return self._runner.run(wrapped())

    def chat_ids(self, messages: Sequence[Message | dict[str, Any]], tools: list[dict] | None = None) -> list[int]:
        """Prompt ids of a chat, through the model's template, ending with the assistant's turn opened."""
        return self.template.encode(parse_messages(messages), self.tokenizer, tools=tools)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.served.prompt_ids(prompt)

    def stream(self, request: ChatRequest) -> TextIterator:
        """Start `request` (errors raise here, before any text) and iterate over its text."""
        return TextIterator(llm=self, reply=self._run(self.service.start(request)))

    def stream_ids(self, prompt_ids: list[int], params: SamplingParams | None = None) -> TextIterator:
        return self.stream(ChatRequest(self.name, prompts=[list(prompt_ids)], params=params or SamplingParams()))

    def stream_chat(self, messages: Sequence[Message | dict[str, Any]], params: SamplingParams | None = None,
                    tools: list[dict] | None = None, *, format: Format = None) -> TextIterator:
        """`format`: structured output, "json", a JSON schema dict or a GrammarSpec (as Ollama's `format`)."""
        return self.stream(ChatRequest(self.name, messages=parse_messages(messages), tools=tools, format=format,
                                       params=params or SamplingParams()))

    def chat(self, messages: Sequence[Message | dict[str, Any]], params: SamplingParams | None = None, *,
             format: Format = None) -> Completion:
        return self.stream_chat(messages, params, format=format).result()

    def generate(self, prompt: str, params: SamplingParams | None = None, *, format: Format = None) -> Completion:
        return self.stream(ChatRequest(self.name, prompts=[prompt], params=params or SamplingParams(),
                                       format=format)).result()

    def embed(self, inputs: Sequence[str | Sequence[int]], *, truncate: bool = True,
              dimensions: int | None = None) -> list[list[float]]:
        """One L2-normalized embedding per text (or token id list): mean-pooled final hidden states."""
        return self._run(self.served.embed(inputs, truncate=truncate, dimensions=dimensions))

    def close(self) -> None:
        """Stop the model's engine, the hub thread that stepped it, and the private event loop."""
        self.served.shutdown()
        self.served.barrier()
        self.served.hub.close()
        self._runner.close()
