"""OutputGuardStage on its own: text is released only once checked, the last hold-back window waits for the
end, and a blocking verdict cuts the stream at the next check with a refusal."""

from __future__ import annotations

import asyncio

import pytest
from fake_guards import MarkerGuard, pipeline

from llamarun.llm.text_stream import StreamChunk, TokenLogprob
from llamarun.safety.output_stage import OutputGuardStage, output_stage_factory
from llamarun.safety.report import GuardReport
from llamarun.sampling.params import SamplingParams


def chunks(text: str) -> list[StreamChunk]:
    """One chunk per character (one token each), the last finished."""
    out = [StreamChunk(c, [ord(c)], [TokenLogprob(ord(c), c, -0.1)]) for c in text]
    out.append(StreamChunk("", [], [], finished=True, finish_reason="stop"))
    return out


def run(stage: OutputGuardStage, text: str) -> list[StreamChunk]:
    async def go() -> list[StreamChunk]:
        out = []
        for c in chunks(text):
            out.append(await stage.feed(c))
            if out[-1].finished:
                break
        return out

    return asyncio.run(go())


@pytest.mark.parametrize(("every", "hold_back"), [(4, 0), (4, 3), (5, 8), (1, 1)])
def test_released_text_was_checked_and_the_hold_back_waits(every: int, hold_back: int) -> None:
    guard = MarkerGuard({"BOMB": "S9"})
    stage = OutputGuardStage(pipeline((guard, "block"), stream_every=every, hold_back=hold_back), GuardReport(), 0, ())
    text = "the quick brown fox jumps over the lazy dog"
    released = ""
    for chunk in chunks(text):
        out = asyncio.run(stage.feed(chunk))
        released += out.text
        assert len(out.text) == len(out.token_ids) == len(out.logprobs)  # ids and logprobs travel with their text
        checked = guard.texts("output")
        if not chunk.finished:
            assert not released or (checked and checked[-1].startswith(released)), "unchecked text was released"
            if checked and released:
                assert len(checked[-1]) - len(released) >= hold_back, "the hold-back window was released early"
    assert released == text and out.finish_reason == "stop"
    assert guard.texts("output")[-1] == text  # the whole reply is checked at the end
    assert len(guard.texts("output")) == len(text) // every + (len(text) % every != 0)


def test_an_unsafe_reply_is_cut_at_the_next_check() -> None:
    guard = MarkerGuard({"BOMB": "S9"})
    report = GuardReport()
    stage = OutputGuardStage(pipeline((guard, "block"), stream_every=4, hold_back=4), report, 0, ())
    text = "safe text first, then a BOMB recipe: " + "x" * 100
    out = run(stage, text)
    released = "".join(c.text for c in out[:-1])
    assert "BOMB" not in released and "BOMB" not in "".join(c.text for c in out[-1:])
    assert text.startswith(released)
    last = out[-1]
    assert last.finished and last.finish_reason == "content_filter" and last.token_ids == []
    assert last.text.startswith("\n\nSorry, I can't help with that.") and "S9" in last.text
    cut_at = len(out) - 1  # chunks fed before the cut
    assert cut_at <= text.index("BOMB") + len("BOMB") + 4, "the stream ran past the next check"
    assert report.to_json(0)["action"] == "block" and report.to_json(0)["categories"] == ["S9"]


def test_a_reply_unsafe_only_at_the_end_is_refused_whole() -> None:
    guard = MarkerGuard({"BOMB": "S9"})
    stage = OutputGuardStage(pipeline((guard, "block"), stream_every=1000, hold_back=0), GuardReport(), 0, ())
    out = run(stage, "all of it is held back until the BOMB")
    assert "".join(c.text for c in out[:-1]) == ""
    assert out[-1].text.startswith("Sorry, I can't help with that.")  # nothing came before: no separator


def test_warn_releases_everything_and_reports() -> None:
    guard = MarkerGuard({"BOMB": "S9"})
    report = GuardReport()
    stage = OutputGuardStage(pipeline((guard, "warn"), stream_every=3, hold_back=2), report, 0, ())
    text = "a bomb, mentioned"
    out = run(stage, text)
    assert "".join(c.text for c in out) == text and out[-1].finish_reason == "stop"
    assert report.to_json(0)["action"] == "warn" and report.to_json(1) is None


def test_tool_calls_are_checked_and_dropped_when_blocked() -> None:
    from llamarun.chat.messages import ToolCall

    guard = MarkerGuard({"rm -rf": "S14"})
    stage = OutputGuardStage(pipeline((guard, "block")), GuardReport(), 0, ())
    last = StreamChunk("", [1], [], finished=True, finish_reason="stop",
                       tool_calls=[ToolCall("shell", {"command": "rm -rf /"})])
    out = asyncio.run(stage.feed(last))
    assert out.finish_reason == "content_filter" and out.tool_calls == []
    assert guard.texts("tool_call") == ['{"name": "shell", "arguments": {"command": "rm -rf /"}}']


def test_the_factory_numbers_generations_in_order() -> None:
    make = output_stage_factory(pipeline((MarkerGuard({}), "block")), GuardReport(), ())
    assert [make(SamplingParams()).index for _ in range(3)] == [0, 1, 2]
