"""Llama 3 tool calls at the token level: <|eom_id|> ends the turn as a stop, and <|python_tag|> (a special
token the detokenizer drops) still marks a built-in call once the real text stream and the tool stage run."""

from __future__ import annotations

from pathlib import Path

import llama_models
import pytest

from llamarun.engine.llm_engine import EngineOutput
from llamarun.engine.request import Request
from llamarun.engine.runner import SampledToken
from llamarun.llm.text_stream import TextStream
from llamarun.llm.tool_stage import tool_stage_factory
from llamarun.loaders.checkpoint import end_of_turn_ids
from llamarun.sampling.params import SamplingParams
from llamarun.text.tiktoken_tokenizer import TiktokenTokenizer

TOOLS = [{"type": "function", "function": {"name": n}} for n in ("brave_search", "code_interpreter", "add")]


@pytest.fixture(scope="module")
def tok() -> TiktokenTokenizer:
    return TiktokenTokenizer.from_file(Path(llama_models.__file__).parent / "llama3" / "tokenizer.model")


def test_eom_is_a_stop_token(tok):
    stops = frozenset(end_of_turn_ids(tok, []))
    eom = tok.token_to_id("<|eom_id|>")
    assert eom == 128008 and eom in stops
    req = Request("r", [1, 2], SamplingParams(), stops, 100)
    assert req.append(tok.encode("x")[0]) and not req.append(eom)
    assert req.finish_reason == "stop"


@pytest.mark.parametrize(("reply", "expected"), [
    ('brave_search.call(query="price of gold")', ("brave_search", {"query": "price of gold"})),
    ("import math\nprint(math.pi)", ("code_interpreter", {"code": "import math\nprint(math.pi)"})),
    ('{"name": "add", "parameters": {"a": 1}}', ("add", {"a": 1})),
])
def test_python_tag_call_through_the_text_stream(tok, reply, expected):
    params = SamplingParams()
    text, stage = TextStream(tok, params), tool_stage_factory(TOOLS, tok)(params)
    ids = [tok.token_to_id("<|python_tag|>"), *tok.encode(reply, allow_special=False)]
    shown, calls = "", []
    for i, token_id in enumerate(ids):  # one token per step; the engine drops the final <|eom_id|>
        last = i == len(ids) - 1
        chunk = stage.feed(text.feed(EngineOutput("r", [SampledToken(token_id)], last, "stop" if last else None)))
        shown += chunk.text
        calls += chunk.tool_calls
    assert shown == "" and [(c.name, c.arguments) for c in calls] == [expected]
