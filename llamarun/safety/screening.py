"""RequestGuard: the chat service's hook into the guard pipeline (llm/chat_service.py calls it).

`screen` judges a request's input before anything reaches the model and returns a `Screening`: when the
input is blocked, its `refusal` generations stand in for the model's (a finished chunk with the refusal,
finish reason "content_filter"; the engine never sees the request); otherwise its `stage` factory puts an
OutputGuardStage on every generation when any guard judges outputs or tool calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from llamarun.engine.stats import RequestStats
from llamarun.llm.chat_service import ChatRequest
from llamarun.llm.generation import Generation, StageFactory
from llamarun.llm.served import ServedModel
from llamarun.llm.text_stream import StreamChunk
from llamarun.safety.output_stage import output_stage_factory
from llamarun.safety.pipeline import GuardPipeline
from llamarun.safety.report import CONTENT_FILTER, GuardReport, refusal_text
from llamarun.safety.subjects import history, input_subjects
from llamarun.safety.verdict import Message


@dataclass
class Screening:
    """One request's guard state: the report (read by the routes as `Reply.guard`) and what comes next."""

    report: GuardReport
    stage: StageFactory | None  # output guards, None when no guard judges replies

    @property
    def blocked(self) -> bool:
        return self.report.input_blocked

    def refusal(self, prompt_ids: list[int]) -> Generation:
        """A generation that is only the refusal: no engine request is made for it."""
        stats = RequestStats(prompt_tokens=len(prompt_ids), done_reason=CONTENT_FILTER)
        chunk = StreamChunk(refusal_text(self.report.input), [], [], finished=True, finish_reason=CONTENT_FILTER,
                            stats=stats)
        return Generation(_nothing(), chunk)


async def _nothing() -> AsyncIterator[StreamChunk]:
    return
    yield  # an async generator with no items: the refusal's first chunk is its only one


class RequestGuard:
    """Screens ChatRequests with a GuardPipeline (the chat service's `guard`)."""

    def __init__(self, pipeline: GuardPipeline) -> None:
        self.pipeline = pipeline

    async def screen(self, model: ServedModel, req: ChatRequest) -> Screening:
        """Judge the input of `req`; GuardUnavailable (a 503) when a guard fails."""
        report = GuardReport()
        report.input = await self.pipeline.check(input_subjects(req.messages, req.prompts, model.tokenizer))
        wants_output = self.pipeline.wants("output") or self.pipeline.wants("tool_call")
        stage = output_stage_factory(self.pipeline, report, _context(req)) if wants_output else None
        return Screening(report, stage)


def _context(req: ChatRequest) -> tuple[Message, ...]:
    """The conversation a reply answers: the messages, or the raw prompt as one user turn."""
    if req.messages is not None:
        return history(req.messages)
    prompts = [p for p in req.prompts or [] if isinstance(p, str)]
    return (Message("user", prompts[0]),) if len(prompts) == 1 else ()
