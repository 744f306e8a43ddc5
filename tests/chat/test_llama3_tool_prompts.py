"""Tool prompts token for token against the reference prompts in Meta's llama-models (Llama 3.1 prompt_format.md).

Each reference prompt is read from the package's own document, split into turns and encoded with Meta's
ChatFormat and tokenizer; ours must give the same ids. Two substitutions, both asserted to touch
nothing else: the example's date is set to one whose month reads the same abbreviated (our format writes
'21 May 2024', as the Hugging Face template does), and the tool's JSON is laid out as json.dumps(indent=4).
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import llama_models
import pytest
from llama_models.datatypes import RawMessage, StopReason
from llama_models.llama3.chat_format import ChatFormat
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

from llamarun.chat import Llama3ChatFormat

DOC = (Path(llama_models.__file__).parent / "llama3_1" / "prompt_format.md").read_text()
TODAY = date(2024, 5, 21)


def reference_prompt(section: str) -> str:
    """The input prompt of a section of Meta's document, with the example date made ours."""
    body = DOC.split(f"## {section}\n", 1)[1].split("##### Input Prompt Format\n```\n", 1)[1]
    text = body.split("\n```", 1)[0]
    return text.replace("21 September 2024", "21 May 2024")


def meta_ids(prompt: str, meta_tok) -> list[int]:
    """`prompt` split into its turns and encoded by Meta's ChatFormat (which opens the assistant turn)."""
    turns = prompt.removeprefix("<|begin_of_text|>").split("<|start_header_id|>")[1:]
    assert turns[-1] == "assistant<|end_header_id|>\n\n"
    messages = []
    for turn in turns[:-1]:
        role, rest = turn.split("<|end_header_id|>\n\n", 1)
        end = "<|eom_id|>" if rest.endswith("<|eom_id|>") else "<|eot_id|>"
        content = rest.removesuffix(end)
        if role == "assistant":  # a call: read back by Meta's own parser, as Meta's executor would
            stop = StopReason.end_of_message if end == "<|eom_id|>" else StopReason.end_of_turn
            messages.append(ChatFormat(meta_tok).decode_assistant_message_from_content(content, stop))
        else:
            messages.append(RawMessage(role="tool" if role == "ipython" else role, content=content))
    ids = ChatFormat(meta_tok).encode_dialog_prompt(messages).tokens
    return ids


@pytest.fixture(scope="module")
def meta_tok():
    return MetaTokenizer.get_instance()


@pytest.fixture(scope="module")
def our_tok():
    from llamarun.text.tiktoken_tokenizer import TiktokenTokenizer

    return TiktokenTokenizer.from_file(Path(llama_models.__file__).parent / "llama3" / "tokenizer.model")


def function_tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def test_system_prompt_with_builtin_tools(meta_tok, our_tok):
    reference = reference_prompt("Builtin Tool Calling")
    assert "Environment: ipython\nTools: brave_search, wolfram_alpha\n" in reference
    dialog = [{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": "Search the web for the latest price of 1oz gold?"}]
    tools = [function_tool("brave_search"), function_tool("wolfram_alpha"), function_tool("code_interpreter")]
    fmt = Llama3ChatFormat(today=TODAY)
    expected = meta_ids(reference, meta_tok)
    assert meta_tok.decode(expected) == reference
    assert fmt.render(dialog, tools=tools) == reference
    assert fmt.encode(dialog, our_tok, tools=tools) == expected


def test_system_prompt_with_custom_tools(meta_tok, our_tok):
    reference = reference_prompt("JSON based tool calling")
    block = reference.split("Here is a list of functions in JSON format:\n", 1)[1].split(
        "\n\nReturn function calls in JSON format.", 1)[0]
    tool = json.loads(block)
    laid_out = json.dumps(tool, indent=4)
    assert re.sub(r"\s", "", laid_out) == re.sub(r"\s", "", block)  # only whitespace differs
    reference = reference.replace(block, laid_out)
    dialog = [{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": "Use tools to get latest trending songs"}]
    fmt = Llama3ChatFormat(today=TODAY)
    expected = meta_ids(reference, meta_tok)
    assert fmt.render(dialog, tools=[tool]) == reference
    assert fmt.encode(dialog, our_tok, tools=[tool]) == expected


def test_builtin_call_and_tool_result_reencoded(meta_tok, our_tok):
    # Meta's full interaction writes no date lines in its system turn (ours always does), so the turns after
    # the system turn are compared: the user turn, the re-encoded wolfram_alpha call and its ipython result.
    reference = reference_prompt("Built-in tools full interaction")
    result = reference.split("<|start_header_id|>ipython<|end_header_id|>\n\n", 1)[1].split("<|eot_id|>", 1)[0]
    dialog = [{"role": "user", "content": "What is the 100th decimal of pi?"},
              {"role": "assistant", "content": "",
               "tool_calls": [{"name": "wolfram_alpha", "arguments": {"query": "100th decimal of pi"}}]},
              {"role": "tool", "tool_call_id": "call_1", "content": result}]
    tools = [function_tool("brave_search"), function_tool("wolfram_alpha")]
    ours = Llama3ChatFormat(today=TODAY).encode(dialog, our_tok, tools=tools)
    expected = meta_ids(reference, meta_tok)
    eot = meta_tok.special_tokens["<|eot_id|>"]
    # Meta's ChatFormat code re-encodes a built-in call without the <|python_tag|> its own document shows
    # (and the model writes); ours keeps the tag, so it goes back where the document has it.
    tag = meta_tok.special_tokens["<|python_tag|>"]
    call_at = expected.index(meta_tok.encode("wolfram_alpha", bos=False, eos=False)[0])
    expected = [*expected[:call_at], tag, *expected[call_at:]]
    assert ours[ours.index(eot) + 1:] == expected[expected.index(eot) + 1:]
    assert meta_tok.decode(expected[expected.index(eot) + 1:]) == reference.split("<|eot_id|>", 1)[1]
