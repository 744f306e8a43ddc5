"""`AsyncLLM`: a model on the batched engine, one async stream per request.

The engine is single-threaded; only the hub's driving thread touches it (engine_hub.py). Requests and
aborts reach it as calls queued on the hub, and its outputs go back to each request's asyncio queue
on that request's event loop. Closing a stream (a client that disconnected) aborts the request and
frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator

import torch

from llamarun.engine.llm_engine import EngineMetrics, EngineOutput
from llamarun.llm.engine_hub import EngineHub, default_hub
from llamarun.llm.loading import load_model
from llamarun.llm.text_stream import StreamChunk, TextStream, TokenLogprob  # noqa: F401 (re-exported)
from llamarun.sampling.params import SamplingParams

log = logging.getLogger(__name__)


class AsyncLLM:
    """A loaded model served by the batched engine; an EngineHub steps it (see engine_hub.py)."""

    def __init__(self, model: str, *, context_length: int | None = None, device: str | None = None,
                 dtype: torch.dtype | None = None, weights: str = "auto", max_kv_tokens: int | None = None,
                 hub: EngineHub | None = None) -> None:
        self._hub = hub or default_hub()
        # Loaded on the hub's thread: the one thread that runs this model's torch kernels (see engine_hub.py).
        lm = self._hub.run_sync(lambda: load_model(model, context_length=context_length, device=device,
                                                   dtype=dtype, weights=weights, kv_tokens=max_kv_tokens))
        self.loaded = lm
        self.name, self.config, self.checkpoint, self.tokenizer = lm.name, lm.config, lm.checkpoint, lm.tokenizer
        self.template, self.stop_ids, self.context_length = lm.template, lm.stop_ids, lm.context_length
        self.load_seconds, self.memory_bytes, self.device = lm.load_seconds, lm.memory_bytes, lm.device
        self.engine = lm.engine
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._ids = itertools.count()
        self._hub.attach(self)

    # ----- text side -----

    def chat_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        return self.loaded.chat_ids(messages, tools)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.loaded.prompt_ids(prompt)

    async def stream(self, prompt_ids: list[int], params: SamplingParams,
                     request_id: str | None = None) -> AsyncIterator[StreamChunk]:
        """Text chunks of one generation; errors for prompts that cannot run come before the first chunk."""
        request_id = request_id or f"req-{next(self._ids)}"
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), outputs)
        ids = list(prompt_ids)
        self._hub.call(lambda: self._add(request_id, ids, params))
        text = TextStream(self.tokenizer, params)
        finished = False
        try:
            while not finished:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    raise item
                chunk = text.feed(item)
                if text.stopped and not item.finished:
                    # A stop string ended it: abort in the engine, and wait for the abort's stats.
                    self._hub.call(lambda: self._abort(request_id))
                    while not (item := await outputs.get()).finished:
                        pass
                    chunk.stats = item.stats
                    if chunk.stats is not None:
                        chunk.stats.done_reason = "stop"
                finished = chunk.finished
                yield chunk
        finally:
            if not finished:
                self._hub.call(lambda: self._abort(request_id))
            self._streams.pop(request_id, None)

    def metrics(self) -> EngineMetrics:
        return self.engine.metrics()

    def shutdown(self) -> None:
        """Abort what is running and stop stepping this model."""
        self._hub.call(lambda: self._fail_all(None))
        self._hub.detach(self)

    # ----- on the hub's thread -----

    def _post(self, request_id: str, item: EngineOutput | BaseException) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, outputs = target
            # RuntimeError: the caller's loop is closed; nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(outputs.put_nowait, item)

    def _add(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        try:
            self.engine.add_request(prompt_ids, params, self.stop_ids, request_id)
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
