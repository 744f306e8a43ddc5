"""The engine: requests in, tokens out, many requests batched per step on a paged KV cache.

Synchronous and single-threaded; the async front (llm/async_llm.py) runs `step()` on a background
thread. Text never enters here: templates, detokenization and stop strings live in llamarun/llm.

Overlapped decoding: on a GPU, a step's host work (scheduling, packing inputs, reading the tokens, the
callers' own work between steps) would leave the GPU idle for a few hundred microseconds a token. While
requests decode steadily, the engine launches a step, then plans and launches the next one before it reads
the first one's tokens (the scheduler's `schedule_ahead`; the runner takes the PENDING tokens on the
device), so the GPU always has the next step queued. A request that a stop token ends runs one step too
many; that step's token is dropped. Prompts, new arrivals, penalties, grammars and logprobs take the plain
path, one step at a time.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import torch

from llamarun.attention.paged_torch import PagedKVCache
from llamarun.cache.block_pool import BlockPool
from llamarun.engine.energy import EnergyMeter
from llamarun.engine.request import Request
from llamarun.engine.runners import make_runner
from llamarun.engine.scheduler import Scheduler
from llamarun.engine.stats import RequestStats
from llamarun.engine.step import SampledToken, SchedulerOutput
from llamarun.errors import LlamarunError
from llamarun.models.llama import LlamaForCausalLM
from llamarun.sampling.params import SamplingParams
from llamarun.structured.engine import compile_grammar
from llamarun.structured.vocab import GrammarVocab


@dataclass
class EngineConfig:
    context_length: int  # most tokens (prompt + output) of one request
    kv_tokens: int  # token slots in the whole KV cache, shared by all requests
    block_size: int = 16
    max_batch_tokens: int | None = None  # tokens per step; None: 512 on CPUs, 8192 on GPUs (see LLMEngine)
    max_running: int = 64
    enable_prefix_cache: bool = True

    def __post_init__(self) -> None:
        if self.kv_tokens < self.context_length:
            raise LlamarunError(f"the KV cache ({self.kv_tokens} tokens) is smaller than the context "
                                f"({self.context_length} tokens)", "raise the KV cache size or lower the context")


@dataclass
class EngineOutput:
    """What one step did for one request."""

    request_id: str
    new_tokens: list[SampledToken] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None
    stats: RequestStats | None = None


@dataclass
class _Inflight:
    """A launched step whose tokens the host has not read, and the requests that are no longer its own."""

    out: SchedulerOutput
    launched: object
    stale: set[str] = field(default_factory=set)


@dataclass
class EngineMetrics:
    running: int
    waiting: int
    kv_blocks_total: int
    kv_blocks_used: int
    prefix_queries: int
    prefix_hits: int
    requests_finished: int
    generated_tokens: int
    preemptions: int


class LLMEngine:
    """Continuous batching over one model."""

    def __init__(self, model: LlamaForCausalLM, config: EngineConfig, *, dtype: torch.dtype,
                 device: str | torch.device, grammar_vocab: GrammarVocab | None = None) -> None:
        """`grammar_vocab`: the model's token bytes and stop ids, for requests whose params carry a grammar."""
        if config.max_batch_tokens is None:
            # A GPU step of 8k prompt tokens still takes milliseconds and keeps the tensor cores busy; on a CPU
            # a smaller step keeps running decodes from waiting long behind a prefill.
            tokens = 8192 if torch.device(device).type == "cuda" else 512
            config = dataclasses.replace(config, max_batch_tokens=tokens)
        self.config = config
        num_blocks = -(-config.kv_tokens // config.block_size)
        self.pool = BlockPool(num_blocks, config.block_size, config.enable_prefix_cache)
        self.cache = PagedKVCache(model.config, num_blocks, config.block_size, dtype, device)
        self.scheduler = Scheduler(self.pool, config.max_batch_tokens, config.max_running)
        self.runner = make_runner(model, self.cache, max_tokens=config.max_batch_tokens,
                                  max_seqs=config.max_running, context_length=config.context_length,
                                  grammar_vocab=grammar_vocab)
        self.grammar_vocab = grammar_vocab
        self._ids = itertools.count()
        self.energy = EnergyMeter.for_device(device)  # None on CPUs
        self._idle = True
        self._finished = 0
        self._generated = 0
        self._inflight: _Inflight | None = None  # a launched step whose tokens are not read yet

    def add_request(self, prompt_ids: list[int], params: SamplingParams, stop_ids: tuple[int, ...] = (),
                    request_id: str | None = None, group: str | None = None) -> str:
        """Queue a request; errors for prompts that can never run are raised here, before any work.

        `group`: the client request it belongs to (requests of one group share the waiting queue's turns).
        """
        if not prompt_ids:
            raise LlamarunError("the prompt is empty", "give some text to continue")
        limit = self.config.context_length
        if len(prompt_ids) >= limit:
            raise LlamarunError(f"the prompt has {len(prompt_ids)} tokens, but the context holds {limit}",
                                "shorten the prompt or raise the context length (num_ctx / --ctx)")
        if params.grammar is not None:
            if self.grammar_vocab is None:
                raise LlamarunError("this engine was built without a vocabulary, so it cannot enforce a grammar",
                                    "load the model through llamarun (load_model passes the vocabulary)")
            compile_grammar(self.grammar_vocab, params.grammar)  # a RequestError now, not in the runner
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.scheduler.requests:
            raise LlamarunError(f"request id {request_id!r} is already in use", "give each request its own id")
        self.scheduler.add(Request(request_id, list(prompt_ids), params, frozenset(stop_ids), limit, group))
        return request_id

    def abort(self, request_id: str) -> EngineOutput | None:
        req = self.scheduler.abort(request_id)
        if req is None:
            return None
        if self._inflight is not None:
            self._inflight.stale.add(request_id)  # its token in the launched step is nobody's now
        self._drop_states_when_idle()
        return EngineOutput(request_id, finished=True, finish_reason="abort", stats=req.stats)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished or self._inflight is not None

    def step(self) -> list[EngineOutput]:
        """Run one batch; report new tokens and finished requests.

        While decoding overlaps, a call launches the next step and reports the one before it.
        """
        if self._inflight is not None:
            return self._step_overlapped()
        out = self.scheduler.schedule()
        if not out.seqs:
            if out.finished_ids:
                self.runner.run(out)  # nothing to run, but the runner still drops finished requests' state
            return []
        if self.energy is not None and self._idle:
            self.energy.delta()  # energy used while idle is nobody's
        self._idle = False
        if self.runner.can_overlap(out):
            self._inflight = _Inflight(out, self.runner.launch(out))
            return []
        sampled = self.runner.run(out)  # ends with the step's one sync, so its GPU work is done
        return self._finish(out, sampled)

    def _step_overlapped(self) -> list[EngineOutput]:
        """Launch the step after the one in flight (when it can be planned now), then report the one in flight."""
        current = self._inflight
        ahead = self.scheduler.schedule_ahead(current.out)
        self._inflight = None
        if ahead is not None:
            self._inflight = _Inflight(ahead, self.runner.launch(ahead, prev=current.launched))
        sampled = self.runner.collect(current.launched, current.stale)
        out = current.out
        if current.stale:  # requests finished or aborted since this step was planned: not theirs any more
            out = dataclasses.replace(out, seqs=[s for s in out.seqs if s.request_id not in current.stale])
        outputs = self._finish(out, sampled)
        if self._inflight is not None:
            self._inflight.stale.update(o.request_id for o in outputs if o.finished)
        return outputs

    def _finish(self, out: SchedulerOutput, sampled: dict[str, SampledToken]) -> list[EngineOutput]:
        """Charge the step's energy, hand its tokens to the scheduler, report them."""
        if self.energy is not None:
            self._charge(out, self.energy.delta())
        touched = self.scheduler.update(out, {rid: t.token_id for rid, t in sampled.items()})
        outputs = []
        for req, kept in touched:
            result = EngineOutput(req.request_id, [sampled[req.request_id]] if kept else [])
            if req.finished:
                self._finished += 1
                result.finished, result.finish_reason, result.stats = True, req.finish_reason, req.stats
            self._generated += len(result.new_tokens)
            outputs.append(result)
        self._drop_states_when_idle()
        return outputs

    def _charge(self, out: SchedulerOutput, joules: float) -> None:
        """Split a step's energy over its requests by the tokens each ran."""
        total = out.num_tokens
        if not total:  # every request of an overlapped step ended before it was read
            return
        for seq in out.seqs:
            req = self.scheduler.requests.get(seq.request_id)
            if req is not None:
                req.stats.energy_joules = (req.stats.energy_joules or 0.0) + joules * seq.num_tokens / total

    def _drop_states_when_idle(self) -> None:
        """Finished requests' runner state goes with the next step; with no next step coming, send one now."""
        if not self.scheduler.has_unfinished:
            self._idle = True
            out = self.scheduler.schedule()  # nothing to schedule: only the ids to drop
            if out.finished_ids:
                self.runner.run(out)

    def metrics(self) -> EngineMetrics:
        return EngineMetrics(
            running=len(self.scheduler.running), waiting=len(self.scheduler.waiting),
            kv_blocks_total=self.pool.num_blocks, kv_blocks_used=self.pool.num_used,
            prefix_queries=self.pool.prefix_queries, prefix_hits=self.pool.prefix_hits,
            requests_finished=self._finished, generated_tokens=self._generated,
            preemptions=self.scheduler.num_preemptions,
        )
