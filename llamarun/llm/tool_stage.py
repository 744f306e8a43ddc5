"""The StreamStage (tool-call parsing) that turns a reply's tool calls into `StreamChunk.tool_calls`, streaming or not.

Text that may start a call is held back until it is decided, so no client ever sees half a call in
`content`: a reply starting (after whitespace) with `{`, `[`, `<|python_tag|>` or `<function=` is held
whole and parsed when the generation ends; other text streams at once, except a tail that could be the
start of a `<function=` tag. The calls arrive complete, on the last chunk, with their arguments whole.

<|python_tag|> is a special token the detokenizer drops from the text, so the stage watches the chunk's
token ids for it; its text is taken as following the tag (the model writes the tag first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from llamarun.llm.generation import StageFactory
from llamarun.llm.text_stream import StreamChunk
from llamarun.sampling.params import SamplingParams
from llamarun.text.tokenizer import Tokenizer
from llamarun.tools.calls import tool_names
from llamarun.tools.function_tag import OPEN_TAG
from llamarun.tools.parse import ToolCallParser

PYTHON_TAG = "<|python_tag|>"
_UNDECIDED, _TEXT, _CALL = "undecided", "text", "call"


class ToolCallStage:
    """Per generation: holds back possible calls, passes the rest on, parses at the end."""

    def __init__(self, parser: ToolCallParser, python_tag_id: int | None = None) -> None:
        self.parser, self.python_tag_id = parser, python_tag_id
        self.mode = _UNDECIDED
        self.held = ""
        self.python_tag = False

    def feed(self, chunk: StreamChunk) -> StreamChunk:
        """The chunk with its text cut to what is decided; the last one carries the calls."""
        if self.python_tag_id is not None and self.python_tag_id in chunk.token_ids:
            self.python_tag, self.mode = True, _CALL
        self.held += chunk.text
        text = self._release()
        calls = []
        if chunk.finished:
            parsed = self.parser.parse(self.held, python_tag=self.python_tag) if self.mode == _CALL else None
            text += parsed.content if parsed is not None else self.held
            calls = parsed.calls if parsed is not None else []
            self.held = ""
        return replace(chunk, text=text, tool_calls=list(calls))

    def _release(self) -> str:
        if self.mode == _CALL:
            return ""
        if self.mode == _UNDECIDED:
            body = self.held.lstrip()
            if not body or (OPEN_TAG.startswith(body) and body != OPEN_TAG):
                return ""  # whitespace, or maybe the start of a tag: wait
            if body.startswith(("{", "[", OPEN_TAG)):
                self.mode = _CALL
                return ""
            self.mode = _TEXT
        at = self.held.find(OPEN_TAG)
        if at >= 0:  # a tag in the middle of text: what comes before it is content
            out, self.held, self.mode = self.held[:at], self.held[at:], _CALL
            return out
        keep = _partial_tag_tail(self.held)
        out = self.held[:len(self.held) - keep]
        self.held = self.held[len(self.held) - keep:]
        return out


def _partial_tag_tail(text: str) -> int:
    """How many trailing characters of `text` could begin a `<function=` tag."""
    for k in range(min(len(OPEN_TAG) - 1, len(text)), 0, -1):
        if OPEN_TAG.startswith(text[-k:]):
            return k
    return 0


def tool_stage_factory(tools: Sequence[Any], tokenizer: Tokenizer) -> StageFactory:
    """A StageFactory parsing calls to `tools` for a model with `tokenizer` (one stage per generation)."""
    names = tool_names(tools)
    tag_id = tokenizer.token_to_id(PYTHON_TAG)
    tag_id = tag_id if tag_id is not None and tag_id in tokenizer.special_ids else None

    def make(_params: SamplingParams) -> ToolCallStage:
        return ToolCallStage(ToolCallParser(names), tag_id)

    return make
