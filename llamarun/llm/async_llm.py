"""`AsyncLLM`: one loaded model on the batched engine, one async token stream per request (a ServedModel).

The engine is single-threaded; only the hub's driving thread touches it (engine/hub.py). Requests and
aborts reach it as calls queued on the hub, and its outputs go back to each request's asyncio queue
on that request's event loop. Cancelling a stream (a stop string, a client that disconnected) aborts
the request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Sequence

import torch

from llamarun.engine.hub import EngineHub, default_hub
from llamarun.engine.llm_engine import EngineMetrics, EngineOutput
from llamarun.engine.stats import RequestStats
from llamarun.errors import RequestError
from llamarun.llm import embeddings
from llamarun.llm.embed_inputs import EmbedInput, check_dimensions, embedding_ids
from llamarun.llm.loading import load_model
from llamarun.llm.text_stream import StreamChunk, text_chunks
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams
from llamarun.store.resolve import ResolvedModel
from llamarun.structured.engine import compile_grammar

log = logging.getLogger(__name__)


class AsyncLLM:
    """A loaded model served by the batched engine; an EngineHub steps it (see engine/hub.py)."""

    def __init__(self, model: str | ResolvedModel, *, context_length: int | None = None, device: str | None = None,
                 dtype: torch.dtype | None = None, weights: str = "auto", max_kv_tokens: int | None = None,
                 hub: EngineHub | None = None, progress: bool = False) -> None:
        self.hub = hub or default_hub()
        # Loaded on the hub's thread: the one thread that runs this model's torch kernels (see engine/hub.py).
        lm = self.hub.run_sync(lambda: load_model(model, context_length=context_length, device=device,
                                                   dtype=dtype, weights=weights, kv_tokens=max_kv_tokens,
                                                   progress=progress))
        self.loaded = lm
        self.name, self.config, self.tokenizer, self.template = lm.name, lm.config, lm.tokenizer, lm.template
        self.format, self.quantization = lm.checkpoint.format, str(lm.checkpoint.quantization)
        self.stop_ids, self.context_length, self.weights = lm.stop_ids, lm.context_length, lm.weights
        self.load_seconds, self.memory_bytes, self.device = lm.load_seconds, lm.memory_bytes, lm.device
        self.load_phases = lm.load_phases
        self.engine = lm.engine
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._ids = itertools.count()
        self.hub.attach(self)

    def prompt_ids(self, prompt: str) -> list[int]:
        """A raw prompt, no template: bos is added when the tokenizer's convention says so."""
        return self.loaded.prompt_ids(prompt)

    def tokens(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None, *,
               group: str | None = None) -> _TokenStream:
        """Start a request; its engine outputs arrive on the returned stream (errors at the first step).

        `group`: the client request it belongs to (engine/fair_queue.py admits groups round-robin)."""
        request_id = request_id or f"req-{next(self._ids)}"
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), outputs)
        ids = list(prompt_ids)
        self.hub.call(lambda: self._add(request_id, ids, params, group))
        return _TokenStream(self, request_id, outputs)

    def stream(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
               ) -> AsyncIterator[StreamChunk]:
        """Text chunks of one generation (stop strings applied); closing it early aborts the request."""
        return text_chunks(self.tokens(prompt_ids, params, request_id), self.tokenizer, params)

    async def embed(self, inputs: Sequence[EmbedInput], *, truncate: bool = True,
                    dimensions: int | None = None) -> list[list[float]]:
        """One L2-normalized embedding per input (text or token ids): see llm/embeddings.py.

        Inputs run one by one on the hub's thread, so engine steps go on between them.
        """
        check_dimensions(dimensions, self.config.hidden_size)
        if hasattr(self.engine.runner, "stop_workers"):  # parallel/runner.py: rank 0 alone cannot run the model
            raise RequestError("embeddings are not available for a model split over ranks (--tp/--pp)",
                               param="model")
        batch = embedding_ids(inputs, self.tokenizer, self.context_length, truncate=truncate)
        lm, pooling = self.loaded, embeddings.checkpoint_pooling(self.loaded.checkpoint.path)
        model = self.engine.runner.model
        return [await embeddings.on_hub(self.hub, lambda ids=ids: embeddings.embed_one(
            model, ids, dtype=lm.dtype, device=lm.device, pooling=pooling, dimensions=dimensions)) for ids in batch]

    def check_grammar(self, spec: GrammarSpec) -> None:
        """Compile `spec` against this model's vocabulary (cached); a RequestError when it cannot be enforced."""
        if self.engine.grammar_vocab is None:
            raise RequestError("this model has no vocabulary for structured output", param="format")
        compile_grammar(self.engine.grammar_vocab, spec)

    def metrics(self) -> EngineMetrics:
        return self.engine.metrics()

    def shutdown(self) -> None:
        """Abort what is running and stop stepping this model."""
        self.hub.call(lambda: self._fail_all(None))
        self.hub.detach(self)
        from llamarun.parallel.pipeline_launch import close_parallel

        self.hub.call(lambda: close_parallel(self.engine))  # a parallel model's ranks stop after its last step

    def barrier(self) -> None:
        """Wait until every call queued on the hub so far (aborts included) has run."""
        self.hub.run_sync(lambda: None)

    # ----- on the hub's thread -----

    def _post(self, request_id: str, item: EngineOutput | BaseException) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, outputs = target
            # RuntimeError: the caller's loop is closed; nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(outputs.put_nowait, item)

    def _add(self, request_id: str, prompt_ids: list[int], params: SamplingParams, group: str | None) -> None:
        try:
            self.engine.add_request(prompt_ids, params, self.stop_ids, request_id, group)
        except Exception as err:
            self._post(request_id, err)

    def _abort(self, request_id: str) -> None:
        out = self.engine.abort(request_id)
        if out is not None:
            self._post(request_id, out)

    def _fail_all(self, err: BaseException | None) -> None:
        """Abort every request; each stream gets `err`, or its abort output when there is none."""
        for req in list(self.engine.scheduler.running) + list(self.engine.scheduler.waiting):
            if err is None:
                self._abort(req.request_id)
            else:
                self.engine.abort(req.request_id)
                self._post(req.request_id, err)

    def step_once(self) -> None:
        """One engine step; a failure fails the requests in it, never the hub."""
        try:
            outputs = self.engine.step()
        except Exception as err:
            log.exception("engine step failed")
            self._fail_all(err)
            return
        for out in outputs:
            self._post(out.request_id, out)


class _TokenStream:
    """One request's engine outputs, read from its asyncio queue (see llm/served.py's TokenStream).

    A plain async iterator rather than an async generator: a generator dropped mid-loop is closed later
    by the garbage collector, which would race with `cancel` for the request's outputs.
    """

    def __init__(self, llm: AsyncLLM, request_id: str, outputs: asyncio.Queue) -> None:
        self._llm, self.request_id, self._outputs = llm, request_id, outputs
        self._done = False
        self._stats: RequestStats | None = None

    def __aiter__(self) -> _TokenStream:
        return self

    async def __anext__(self) -> EngineOutput:
        if self._done:
            raise StopAsyncIteration
        item = await self._outputs.get()
        if isinstance(item, BaseException):
            self._end(None)
            raise item
        if item.finished:
            self._end(item.stats)
        return item

    async def cancel(self) -> RequestStats | None:
        if self._done:
            return self._stats
        self._llm.hub.call(lambda: self._llm._abort(self.request_id))
        item: EngineOutput | BaseException | None = None
        try:
            while True:  # the abort's own output carries the stats; token outputs before it are dropped
                item = await self._outputs.get()
                if isinstance(item, BaseException) or item.finished:
                    break
        finally:  # cancelled while waiting: the abort is queued all the same
            self._end(item.stats if isinstance(item, EngineOutput) else None)
        return self._stats

    def _end(self, stats: RequestStats | None) -> None:
        self._done, self._stats = True, stats
        self._llm._streams.pop(self.request_id, None)
