"""The one request path: a typed ChatRequest in, a Reply of running generations out.

Every front end (the OpenAI routes, Ollama's chat and generate, `llamarun run`, the Python API) builds a
`ChatRequest` and calls `ChatService.start`, which owns, in order: acquiring the model, the chat
template, the prompt checks, fitting max_tokens into the context, and starting the generations. The
`Reply` streams their text (through any `StreamStage`s), collects it, and on `close` cancels what still
runs, gives the model back and reports each generation once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llamarun.chat.messages import Message
from llamarun.errors import LlamarunError, RequestError
from llamarun.llm.generation import Generation, StageFactory, collect_all, merged, start_all
from llamarun.llm.large_inputs import is_large
from llamarun.llm.model_settings import SettingsLookup, apply_settings, chat_template
from llamarun.llm.request_limits import RequestLimits
from llamarun.llm.response_format import with_grammar
from llamarun.llm.served import ServedModel
from llamarun.llm.text_stream import Completion, StreamChunk
from llamarun.llm.tool_stage import tool_stage_factory
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams
from llamarun.tools.choice import apply_forced_call
from llamarun.utils.heap import then_release


@dataclass
class ChatRequest:
    """What a client asks for, whatever API it came through.

    Either `messages` (rendered through the model's chat template, with `tools`) or `prompts` (raw text
    or token ids, no template; one generation set per prompt). `n` generations run per prompt; seeded
    ones use seed, seed+1, ... so they differ yet repeat. With `tools`, replies are parsed for calls
    (llm/tool_stage.py); `forced_call_schema` (tool_choice "required" or a named function) constrains
    the reply to one call through the grammar. `context` is token ids put before the prompt
    (Ollama's generate). `strict_max_tokens`: asking for more than the context holds is an error (OpenAI)
    rather than silently lowered (Ollama). `api` labels the request in metrics. `given`: the SamplingParams
    fields the client set (None: all), which a created model's parameters leave alone; `template`: a
    Jinja chat template replacing the model's (a created model's, llm/model_settings.py). `format`: structured
    output, a GrammarSpec or Ollama's "json" / a JSON schema (llm/response_format.py); it becomes `params.grammar`.
    """

    model: str
    messages: list[Message] | None = None
    prompts: list[str | list[int]] | None = None
    tools: list[dict[str, Any]] | None = None
    forced_call_schema: dict[str, Any] | None = None
    format: GrammarSpec | str | dict[str, Any] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    context: list[int] | None = None
    num_ctx: int | None = None
    keep_alive: float | None = None
    strict_max_tokens: bool = False
    api: str = "python"
    given: frozenset[str] | None = None
    template: str | None = None


class Lease(Protocol):
    """A request's hold on a loaded model."""

    served: ServedModel
    load_seconds: float  # what this request waited for the model to load


class ModelSource(Protocol):
    """Where models come from: the server's ModelManager, or one model held by `LLM`."""

    async def acquire(self, name: str, *, num_ctx: int | None = None, keep_alive: float | None = None
                      ) -> Lease: ...

    def release(self, lease: Lease) -> None: ...


OnFinish = Callable[[ServedModel, ChatRequest, Completion], None]


class Screener(Protocol):
    """The safety guards' hook (safety/screening.py): judges a request's input before the model sees it.

    The screening it returns has `blocked`, `refusal(prompt_ids) -> Generation` (stands in for the model's
    generation when blocked), `stage` (a StageFactory for output guards, or None) and `report`."""

    async def screen(self, model: ServedModel, req: ChatRequest) -> Any: ...


class ChatService:
    """Starts ChatRequests on the models of a ModelSource, within `limits` per request; `settings` finds a
    created model's own settings by name."""

    def __init__(self, models: ModelSource, *, on_finish: OnFinish | None = None,
                 stages: Sequence[StageFactory] = (), limits: RequestLimits | None = None,
                 settings: SettingsLookup | None = None, guard: Screener | None = None) -> None:
        self.models, self.on_finish, self.stages = models, on_finish, tuple(stages)
        self.guard = guard
        self.limits = limits or RequestLimits()
        self.settings = settings

    async def start(self, req: ChatRequest, request_id: str | None = None) -> Reply:
        """Acquire the model, build and check the prompts, start every generation; errors come before any text."""
        _check_request(req)
        self.limits.check_generations(req)
        model_settings = await asyncio.to_thread(self.settings, req.model) if self.settings else None
        if model_settings is not None:
            req = apply_settings(req, model_settings)
        started = time.perf_counter()
        lease = await self.models.acquire(req.model, num_ctx=req.num_ctx, keep_alive=req.keep_alive)
        try:
            model = lease.served
            if req.forced_call_schema is not None:  # tool_choice required/named: the call's schema is the grammar
                req = dataclasses.replace(req, params=apply_forced_call(req.params, req.forced_call_schema))
            base = await with_grammar(model, req)
            # A large input's tokenizer buffers go back to the OS once freed, or the server stays that big.
            prompts = await asyncio.to_thread(then_release, is_large(req), prompt_ids, model, req)
            self.limits.check_prompt_tokens(prompts, "messages" if req.messages is not None else "prompt")
            params = [fit_max_tokens(model, ids, base, strict=req.strict_max_tokens) for ids in prompts]
            rid = request_id or f"req-{uuid.uuid4().hex[:24]}"
            all_ids = [ids for ids in prompts for _ in range(req.n)]
            all_params = [_seeded(p, i) for p in params for i in range(req.n)]
            stages = (*self.stages, tool_stage_factory(req.tools, model.tokenizer)) if req.tools else self.stages
            screening = await self.guard.screen(model, req) if self.guard is not None else None
            if screening is not None and screening.stage is not None:
                stages = (*stages, screening.stage)  # after tool parsing: output guards see content and calls
            if screening is not None and screening.blocked:  # the refusal stands in; the model never sees it
                gens = [screening.refusal(ids) for ids in all_ids]
            else:
                gens = await start_all(model, all_ids, all_params, rid, stages)
        except BaseException:
            self.models.release(lease)
            raise
        return Reply(self, req, rid, lease, prompts, gens, started,
                     guard=screening.report if screening is not None else None)


@dataclass(eq=False)
class Reply:
    """A started ChatRequest: `n` generations per prompt, in order, on one leased model."""

    service: ChatService
    request: ChatRequest
    request_id: str
    lease: Lease
    prompts: list[list[int]]
    generations: list[Generation]
    started: float  # perf_counter when the request arrived at the service
    closed: bool = False
    guard: Any = None  # what the safety guards found (safety/report.py GuardReport), None without guards

    @property
    def model(self) -> ServedModel:
        return self.lease.served

    def chunks(self) -> AsyncIterator[tuple[int, StreamChunk]]:
        """(generation index, chunk) as they come."""
        return merged(self.generations)

    async def collect(self) -> list[Completion]:
        return await collect_all(self.generations)

    def usage(self) -> dict[str, float]:
        """Token counts (each distinct prompt once, every generation's output, cached prompt tokens), and the
        GPU energy of every generation when it was metered."""
        done = [g.result for g in self.generations]
        completion = sum(c.stats.generated_tokens or len(c.token_ids) for c in done)
        cached = sum(done[k].stats.cached_tokens for k in range(0, len(done), self.request.n))
        prompt = sum(len(ids) for ids in self.prompts)
        out = {"prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": cached}
        energy = [c.stats.energy_joules for c in done if c.stats.energy_joules is not None]
        if energy:
            out["energy_joules"] = sum(energy)
        return out

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    async def close(self) -> None:
        """Cancel what still runs, give the model back, report each generation once. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        for g in self.generations:
            await g.close()
        self.service.models.release(self.lease)
        if self.service.on_finish is not None:
            for g in self.generations:
                self.service.on_finish(self.model, self.request, g.result)


def _check_request(req: ChatRequest) -> None:
    if (req.messages is None) == (req.prompts is None):
        raise RequestError("a request needs either messages or a prompt", param="messages")
    if req.n < 1:
        raise RequestError(f"n={req.n} is below 1", param="n")


def prompt_ids(model: ServedModel, req: ChatRequest) -> list[list[int]]:
    """The token ids of each prompt of `req`, checked against the vocabulary and the context."""
    if req.messages is not None:
        try:
            template = chat_template(model, req.template)
            ids = template.encode(req.messages, model.tokenizer, add_generation_prompt=True, tools=req.tools)
        except LlamarunError:
            raise
        except Exception as err:  # a template's own failure is about these messages
            raise RequestError(f"the chat template cannot render these messages: {err}", param="messages") from None
        prompts = [ids]
    else:
        prompts = [_raw_ids(model, p) for p in req.prompts or []]
    if req.context:
        _check_vocab(model, req.context, "context")
        bos = model.tokenizer.bos_id
        prompts = [list(req.context) + (ids[1:] if ids and ids[0] == bos else ids) for ids in prompts]
    for ids in prompts:
        check_prompt(model, ids, "messages" if req.messages is not None else "prompt", asked_ctx=req.num_ctx)
    return prompts


def _raw_ids(model: ServedModel, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return model.tokenizer.encode(prompt, add_bos=model.tokenizer.add_bos, allow_special=True)
    _check_vocab(model, prompt, "prompt")
    return list(prompt)


def _check_vocab(model: ServedModel, ids: list[int], param: str) -> None:
    vocab = model.tokenizer.vocab_size
    bad = next((i for i in ids if not 0 <= i < vocab), None)
    if bad is not None:
        raise RequestError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param=param)


def check_prompt(model: ServedModel, ids: list[int], param: str, asked_ctx: int | None = None) -> None:
    """An empty prompt, or one that leaves no room to generate, is the client's error.

    `asked_ctx`: the context the request asked for; when the model is shared with another context, the
    error says which one it has, since the request could not change it.
    """
    if not ids:
        raise RequestError("the prompt is empty", param=param)
    ctx = model.context_length
    if len(ids) >= ctx:
        shared = (f" (num_ctx={asked_ctx} was not applied: the model is loaded with a {ctx}-token context "
                  "that other clients share)" if asked_ctx is not None and asked_ctx != ctx else "")
        raise RequestError(f"the prompt has {len(ids)} tokens, but the context holds {ctx}{shared}; shorten the "
                           "prompt or load the model with a larger context", param=param,
                           code="context_length_exceeded")


def fit_max_tokens(model: ServedModel, ids: list[int], params: SamplingParams, *, strict: bool) -> SamplingParams:
    """Limit generation to the room left in the context: an error when `strict`, else lowered silently."""
    room = model.context_length - len(ids)
    if params.max_tokens is None:
        return params.replace(max_tokens=room)
    if params.max_tokens <= room:
        return params
    if strict:
        raise RequestError(f"this model's context holds {model.context_length} tokens, but {len(ids)} are in the "
                           f"prompt and {params.max_tokens} were asked for in the completion; lower the maximum "
                           "tokens or shorten the prompt", param="max_tokens", code="context_length_exceeded")
    return params.replace(max_tokens=room)


def _seeded(params: SamplingParams, i: int) -> SamplingParams:
    return params if params.seed is None or i == 0 else params.replace(seed=(params.seed + i) % 2**64)
