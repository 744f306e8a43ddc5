"""Eval windows: every position scored exactly once, every window full length, clear errors for bad sizes."""

from __future__ import annotations

import pytest

from llamarun.errors import LlamarunError
from llamarun.eval.windows import plan_windows


@pytest.mark.parametrize(("tokens", "ctx", "stride"), [
    (513, 512, None), (1025, 512, 512), (1100, 512, 512), (1100, 512, 256), (1100, 512, 1), (40, 8, 3),
    (9, 8, 8), (100, 7, 5), (20481, 512, 512),
])
def test_each_position_is_scored_once_by_full_windows(tokens, ctx, stride) -> None:
    windows = plan_windows(tokens, ctx, stride)
    scored = [p for w in windows for p in range(w.scored_from, w.end)]
    assert scored == list(range(tokens - 1))  # each position once, in order (position p predicts token p + 1)
    for w in windows:
        assert w.end - w.start == ctx
        assert w.start <= w.scored_from < w.end <= tokens - 1
    starts = [w.start for w in windows]
    step = stride or ctx
    # every window but the last starts `stride` after the one before; the last may move back to end the text
    assert starts[:-1] == [i * step for i in range(len(windows) - 1)]


def test_overlap_is_context_only() -> None:
    windows = plan_windows(1025, 512, 256)
    assert windows[1].start == 256 and windows[1].scored_from == 512  # 256 tokens of context, 256 scored


def test_text_shorter_than_one_window_is_a_clear_error() -> None:
    with pytest.raises(LlamarunError, match="shorter than one window of 512 tokens"):
        plan_windows(512, 512)
    plan_windows(513, 512)  # one window and the token it predicts: enough


@pytest.mark.parametrize(("ctx", "stride", "message"), [
    (512, 0, "stride 0"), (512, 513, "stride 513"), (1, None, "too small"),
])
def test_bad_sizes_are_clear_errors(ctx, stride, message) -> None:
    with pytest.raises(LlamarunError, match=message):
        plan_windows(5000, ctx, stride)
