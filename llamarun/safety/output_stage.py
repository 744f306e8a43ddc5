"""OutputGuardStage: a StreamStage that releases a reply's text only once the output guards passed it.

Every `every` tokens the whole reply so far is checked; what passed is released to the client except
the last `hold_back` tokens, which wait for the next check (a sentence may turn unsafe with its next
words). When the generation ends, the whole reply and its tool calls are checked and the rest is
released. A blocking verdict ends the generation at once (the engine request is cancelled) with the
finish reason "content_filter" and a short refusal as the last text; what was released before stays
released, since it had passed. Token ids and logprobs are held with their text, so nothing unchecked leaks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace

from llamarun.llm.text_stream import StreamChunk, TokenLogprob
from llamarun.safety.pipeline import GuardPipeline, Judgement
from llamarun.safety.report import CONTENT_FILTER, GuardReport, refusal_text
from llamarun.safety.subjects import call_subjects, output_subject
from llamarun.safety.verdict import Message
from llamarun.sampling.params import SamplingParams


class OutputGuardStage:
    """Per generation: held pieces, the text so far, and where the last check stood."""

    def __init__(self, pipeline: GuardPipeline, report: GuardReport, index: int,
                 context: tuple[Message, ...]) -> None:
        self.pipeline, self.report, self.index, self.context = pipeline, report, index, context
        self.every, self.hold_back = pipeline.stream_every, pipeline.hold_back
        self.held: list[tuple[str, list[int], list[TokenLogprob]]] = []
        self.text = ""  # the whole reply so far, released or held
        self.unchecked = 0  # tokens since the last check
        self.checked_len = 0  # length of the text the last check saw
        self.released_any = False
        self.last: Judgement | None = None  # the last check's judgement

    async def feed(self, chunk: StreamChunk) -> StreamChunk:
        """The chunk with its text, ids and logprobs cut to what has passed; a refusal when blocked."""
        self.held.append((chunk.text, list(chunk.token_ids), list(chunk.logprobs)))
        self.text += chunk.text
        self.unchecked += len(chunk.token_ids)
        if chunk.finished:
            return await self._finish(chunk)
        if self.unchecked < self.every or len(self.text) == self.checked_len:
            return self._release(chunk, keep=None)
        judgement = await self._check(final=False)
        if judgement.blocked:
            return self._refuse(chunk, judgement)
        return self._release(chunk, keep=self.hold_back)

    async def _finish(self, chunk: StreamChunk) -> StreamChunk:
        if self.last is not None and len(self.text) == self.checked_len and not chunk.tool_calls:
            judgement = self.last  # the last check already saw the whole reply
            self.pipeline.record(judgement)
        else:
            judgement = await self._check(final=True, calls=chunk.tool_calls)
        if judgement.blocked:
            return self._refuse(chunk, judgement)
        return self._release(chunk, keep=0)

    async def _check(self, *, final: bool, calls: list = ()) -> Judgement:
        subjects = [output_subject(self.text, self.context, partial=not final)] if self.text.strip() else []
        subjects += call_subjects(calls, self.context)
        judgement = await self.pipeline.check(subjects, record=False)
        self.unchecked, self.checked_len = 0, len(self.text)
        self.report.set_output(self.index, judgement)
        self.last = judgement
        if final or judgement.blocked:  # one reply is recorded (logged, counted) once
            self.pipeline.record(judgement)
        return judgement

    def _release(self, chunk: StreamChunk, keep: int | None) -> StreamChunk:
        """Pass on the held pieces from the front while at least `keep` tokens stay held (None: pass none)."""
        out: list[tuple[str, list[int], list[TokenLogprob]]] = []
        if keep is not None:
            held_tokens = sum(len(ids) for _, ids, _ in self.held)
            while self.held and held_tokens - len(self.held[0][1]) >= keep:
                held_tokens -= len(self.held[0][1])
                out.append(self.held.pop(0))
        text = "".join(t for t, _, _ in out)
        self.released_any = self.released_any or bool(text)
        return replace(chunk, text=text, token_ids=list(itertools.chain.from_iterable(i for _, i, _ in out)),
                       logprobs=list(itertools.chain.from_iterable(lp for _, _, lp in out)))

    def _refuse(self, chunk: StreamChunk, judgement: Judgement) -> StreamChunk:
        self.held = []
        return replace(chunk, text=refusal_text(judgement, after_text=self.released_any), token_ids=[],
                       logprobs=[], finished=True, finish_reason=CONTENT_FILTER, tool_calls=[])


def output_stage_factory(pipeline: GuardPipeline, report: GuardReport,
                         context: tuple[Message, ...]) -> Callable[[SamplingParams], OutputGuardStage]:
    """A StageFactory making one stage per generation; the chat service makes them in generation order,
    so the k-th stage made judges generation k (the report's index, an OpenAI choice)."""
    counter = itertools.count()

    def make(_params: SamplingParams) -> OutputGuardStage:
        return OutputGuardStage(pipeline, report, next(counter), context)

    return make
