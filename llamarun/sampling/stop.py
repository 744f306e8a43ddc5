"""Stop strings on streamed text: emit what is safe now, hold back what could begin a stop string.

The engine is token in, token out; stop strings are text, so they are matched here, on the detokenized
stream. A stop string may arrive split over any number of pushes (one token can be a fragment of a
word, or several words), so the matcher keeps the longest tail of the text that is still a prefix of
some stop string, and emits it only once it can no longer become one.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    """Cuts a text stream at the first occurrence of any stop string.

    `push(text)` returns (text safe to emit, whether a stop string was hit). Once hit, the emitted
    text ends just before the stop string; the stop string and anything after it are dropped, and later
    pushes return ("", True). `matched` says which stop string ended the stream.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self.stops = tuple(stops)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._held = ""
        self.matched: str | None = None

    @property
    def stopped(self) -> bool:
        """True once a stop string has been seen."""
        return self.matched is not None

    def push(self, text: str) -> tuple[str, bool]:
        """Add streamed text; return the part safe to emit now and whether a stop string was hit."""
        if self.matched is not None:
            return "", True
        if not self.stops:
            return text, False
        buffer = self._held + text
        # The held tail holds no whole stop string, so only matches reaching into `text` are new,
        # but searching the short buffer from its start is simpler and just as cheap.
        cut, matched = _earliest_match(buffer, self.stops)
        hold = _partial_suffix_length(buffer, self.stops, self._longest)
        # A longer stop string that starts before the match may still complete ("aba" vs "b" in "ab"):
        # the answer must not depend on how the text was split, so wait for it.
        if matched is not None and len(buffer) - hold >= cut:
            self._held = ""
            self.matched = matched
            return buffer[:cut], True
        self._held = buffer[len(buffer) - hold:] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """At the end of the stream: the held-back text (it never became a stop string)."""
        held, self._held = self._held, ""
        if self.matched is not None:
            return ""
        cut, matched = _earliest_match(held, self.stops)  # a match that waited for a longer one
        if matched is not None:
            self.matched = matched
            return held[:cut]
        return held


def _earliest_match(buffer: str, stops: tuple[str, ...]) -> tuple[int, str | None]:
    """Start index and text of the stop string that occurs first in `buffer` (ties: the shortest)."""
    best, found = len(buffer) + 1, None
    for stop in stops:
        at = buffer.find(stop)
        if at != -1 and (at < best or (at == best and found is not None and len(stop) < len(found))):
            best, found = at, stop
    return best, found


def _partial_suffix_length(buffer: str, stops: tuple[str, ...], longest: int) -> int:
    """Length of the longest suffix of `buffer` that is a proper prefix of some stop string."""
    for length in range(min(len(buffer), longest - 1), 0, -1):
        tail = buffer[-length:]
        if any(stop.startswith(tail) for stop in stops):
            return length
    return 0
