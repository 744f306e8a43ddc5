"""Streaming detokenization: token ids in, newly complete text out.

Works on each token's raw bytes through an incremental UTF-8 decoder, so a character split across
tokens (common for Japanese, emoji and byte-fallback tokens) is held back until its last byte
arrives, and each step costs the same however long the sequence already is.
"""

from __future__ import annotations

import codecs

from llamarun.text.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces.

    The pieces returned by `add` (and finally `flush`) always add up to
    `tokenizer.decode(ids, skip_special=skip_special)`, and never end in half a UTF-8 character.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = tokenizer.special_ids if skip_special else frozenset()
        # errors="replace" in an incremental decoder replaces exactly what a one-shot decode of the
        # same bytes would, and keeps an unfinished character buffered instead.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Tokenizers that strip a leading space do so from the first bytes that reach the text.
        self._strip_pending = tokenizer.strips_leading_space

    def add(self, token_id: int) -> str:
        """Feed one token; returns the text it completes (often '', never a partial character)."""
        if token_id in self._skip:
            return ""
        data = self._tokenizer.token_bytes(token_id)
        if self._strip_pending and data:
            self._strip_pending = False
            if data[:1] == b" ":
                data = data[1:]
        return self._utf8.decode(data)

    def add_many(self, token_ids: list[int]) -> str:
        """Feed several tokens at once; returns the text they complete."""
        return "".join(self.add(t) for t in token_ids)

    def flush(self) -> str:
        """End of stream: returns what is still held (an unfinished character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)
