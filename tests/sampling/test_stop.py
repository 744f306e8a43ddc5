"""StopStringMatcher on streamed text: tricky splits, overlaps, hold-back and flush."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamarun.sampling.stop import StopStringMatcher


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool, list[str]]:
    """Stream `pieces`; return everything emitted (with the final flush), hit flag, per-push outputs.

    A short stop string may only be confirmed at the end, when a longer one that began earlier did not
    complete, so the hit flag is read after the flush.
    """
    matcher = StopStringMatcher(stops)
    emitted, outputs = "", []
    for piece in pieces:
        out, _ = matcher.push(piece)
        outputs.append(out)
        emitted += out
    emitted += matcher.flush()
    return emitted, matcher.stopped, outputs


def _reference(stops: list[str], text: str) -> tuple[str, bool]:
    """The text up to the earliest occurrence of any stop string."""
    hits = [text.find(s) for s in stops if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def test_stop_inside_one_push() -> None:
    assert _run(["###"], ["Hello ### world"])[:2] == ("Hello ", True)


def test_stop_split_over_many_pushes_is_held_back() -> None:
    emitted, hit, outputs = _run(["<|end|>"], ["Hi", " <", "|e", "n", "d", "|", ">", " tail"])
    assert (emitted, hit) == ("Hi ", True)
    assert outputs[:2] == ["Hi", " "]  # "<" is held back: it might start the stop string
    assert all(o == "" for o in outputs[2:])


def test_held_text_is_released_when_it_stops_matching() -> None:
    matcher = StopStringMatcher(["###END"])
    assert matcher.push("Hello ###") == ("Hello ", False)
    assert matcher.push("X") == ("###X", False)
    assert matcher.push("#") == ("", False)
    assert matcher.flush() == "#"  # the end of the stream releases what was held


def test_overlapping_prefix_aab_in_aaab() -> None:
    emitted, hit, outputs = _run(["aab"], list("aaab"))
    assert (emitted, hit) == ("a", True)
    assert outputs == ["", "", "a", ""]


def test_earliest_stop_wins_and_later_pushes_are_dropped() -> None:
    matcher = StopStringMatcher(["world", "lo w"])
    assert matcher.push("hello world") == ("hel", True)
    assert matcher.matched == "lo w" and matcher.stopped
    assert matcher.push("more") == ("", True)
    assert matcher.flush() == ""


def test_stop_at_start_and_whole_push() -> None:
    assert _run(["\n\n"], ["\n\n", "x"])[:2] == ("", True)
    assert _run(["stop"], ["sto", "p"])[:2] == ("", True)


def test_no_stops_passes_text_through() -> None:
    assert _run([], ["a", "b#"])[2] == ["a", "b#"]


def test_text_that_cannot_start_a_stop_is_emitted_at_once() -> None:
    assert _run(["</s>"], ["abc", "def"])[2] == ["abc", "def"]


def test_unicode_stop_strings() -> None:
    assert _run(["🙂!"], ["ça va ", "🙂", "?", "🙂", "!", "x"])[:2] == ("ça va 🙂?", True)


def test_empty_stop_string_rejected() -> None:
    with pytest.raises(ValueError):
        StopStringMatcher(["ok", ""])


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab#\n", max_size=30),
    stops=st.lists(st.text(alphabet="ab#\n", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=10),
)
def test_any_split_gives_the_reference_answer(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    emitted, hit, outputs = _run(stops, pieces)
    assert (emitted, hit) == _reference(stops, text)
    # Nothing is held back longer than needed: after each push, the text not yet emitted could
    # still become a stop string (it is a proper prefix of one).
    total, consumed = "", ""
    for piece, out in zip(pieces, outputs, strict=True):
        consumed += piece
        total += out
        if any(s in consumed for s in stops):
            break
        held = consumed[len(total):]
        assert consumed.startswith(total)
        assert held == "" or any(s.startswith(held) and s != held for s in stops)
