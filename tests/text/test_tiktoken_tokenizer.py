"""Llama 3 tiktoken tokenizer: ids identical to Meta's reference tokenizer from llama-models."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamarun.errors import CheckpointError, LlamarunError, ModelNotFoundError
from llamarun.text.tiktoken_tokenizer import TiktokenTokenizer, split_for_tiktoken

llama3 = pytest.importorskip("llama_models.llama3.tokenizer")
MODEL_PATH = Path(llama3.__file__).parent / "tokenizer.model"

TEXTS = [
    "Hello, world! How are you doing today?",
    "日本語のテキストです。東京は今日も晴れています。",
    "สวัสดีครับ วันนี้อากาศดีมาก ภาษาไทย",
    "नमस्ते दुनिया, यह हिंदी का एक वाक्य है।",
    "emoji 😀👍🏽🇯🇵 👨‍👩‍👧 family ❤️",
    "def f(x):\n\treturn x ** 2  # square\r\n\nclass A:\n    pass\n",
    "tabs\t\tand  multiple   spaces\r\nwindows line\n\n\ntrailing   ",
    "   leading spaces and a trailing newline\n",
    "digits 1234567890 3.14159 1,000,000 and 42",
    "I'm sure you're right, it's WE'LL and THEY'VE",
    "mixed\u00a0nbsp\u200bzero-width\u3000ideographic space",
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def meta():
    return llama3.Tokenizer(MODEL_PATH)


@pytest.fixture(scope="module")
def ours() -> TiktokenTokenizer:
    return TiktokenTokenizer.from_file(MODEL_PATH)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_meta(meta, ours, text):
    expected = meta.encode(text, bos=False, eos=False)
    assert ours.encode(text, allow_special=False) == expected
    assert ours.encode(text, add_bos=True) == meta.encode(text, bos=True, eos=False, allowed_special="all")
    assert ours.decode(expected) == text


def test_500k_char_string_matches_meta(meta, ours):
    # Over Meta's 400k chunk size, with runs of every kind crossing the chunk boundary.
    rng = random.Random(1)
    parts = ["hello ", "世界", "  ", "\n", "😀", "1234", "x" * 40, "สวัสดี", "\t"]
    text = "".join(rng.choice(parts) for _ in range(120_000))[:500_000]
    assert len(text) == 500_000
    ids = ours.encode(text, allow_special=False)
    assert ids == meta.encode(text, bos=False, eos=False)
    assert ours.decode(ids) == text


@pytest.mark.parametrize(
    "text",
    [
        " " * 30_000,
        "a" + " " * 30_000 + "b",
        "word " + "z" * 60_000 + " end",
        "\n" * 26_000 + " " * 26_000,
        "x" * 399_990 + " " * 30_000,  # a whitespace run cut by the 400k chunk boundary
    ],
    ids=["30k-spaces", "spaces-between", "60k-letters", "newlines-then-spaces", "run-over-chunk"],
)
def test_long_runs_match_meta(meta, ours, text):
    assert ours.encode(text, allow_special=False) == meta.encode(text, bos=False, eos=False)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([" ", "\n", "\u3000", "a", "日"]), st.integers(0, 40)), max_size=8),
    st.integers(1, 60),
    st.integers(1, 12),
)
def test_split_points_match_meta(runs, chunk, max_run):
    """Cut points equal Meta's for any mix of runs, with small limits so every branch is reached."""
    text = "".join(ch * n for ch, n in runs)
    split = llama3.Tokenizer._split_whitespaces_or_nonwhitespaces
    expected = [p for i in range(0, len(text), chunk) for p in split(text[i : i + chunk], max_run)]
    assert split_for_tiktoken(text, chunk, max_run) == (expected or [""])


def test_special_tokens_named_like_meta(meta, ours):
    assert ours.special_tokens == meta.special_tokens
    assert len(ours.special_ids) == 256
    assert ours.vocab_size == meta.n_words == 128256
    assert (ours.bos_id, ours.eos_id, ours.eot_id, ours.eom_id) == (128000, 128001, 128009, 128008)
    assert ours.token_to_id("<|eot_id|>") == 128009
    assert ours.token_to_id("<|python_tag|>") == 128010
    assert ours.token_to_id("<|reserved_special_token_245|>") == 128255
    assert ours.token_to_id(" hello") == meta.encode(" hello", bos=False, eos=False)[0]
    assert ours.token_to_id("no such token at all") is None
    assert ours.add_bos is True


def test_special_text_in_user_input(meta, ours):
    text = "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    as_special = ours.encode(text, allow_special=True)
    assert as_special == meta.encode(text, bos=False, eos=False, allowed_special="all")
    assert 128009 in as_special and 128006 in as_special
    as_text = ours.encode(text, allow_special=False)
    assert as_text == meta.encode(text, bos=False, eos=False)
    assert not set(as_text) & ours.special_ids
    assert ours.decode(as_text) == text


def test_decode_skip_special_and_token_bytes(ours):
    ids = ours.encode("<|begin_of_text|>Hi there<|eot_id|>")
    assert ours.decode(ids) == "<|begin_of_text|>Hi there<|eot_id|>"
    assert ours.decode(ids, skip_special=True) == "Hi there"
    assert ours.token_bytes(128009) == b"<|eot_id|>"
    assert b"".join(ours.token_bytes(i) for i in ours.encode("日本")) == "日本".encode()
    # A lone continuation byte decodes to U+FFFD rather than raising.
    lone = next(i for i in range(ours.vocab_size) if ours.token_bytes(i) == b"\x80")
    assert ours.decode([lone]) == "\ufffd"


def test_bad_ids_raise_clear_error(ours):
    with pytest.raises(LlamarunError, match="outside the vocabulary"):
        ours.decode([1, 128256])
    with pytest.raises(LlamarunError, match="outside the vocabulary"):
        ours.token_bytes(-1)


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        TiktokenTokenizer.from_file(tmp_path / "tokenizer.model")


def test_folder_with_tokenizer_model(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(MODEL_PATH.read_bytes())
    assert TiktokenTokenizer.from_file(tmp_path).encode("hello") == [15339]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x0a\x0b\x80\xff\xfe sentencepiece protobuf", "binary"),
        (b"IQ== 0\nnot-base64!! 1\n", "line 2"),
        (b"IQ== 0\nIg== 5\n", "gaps"),
        (b"\n\n", "no tokens"),
    ],
)
def test_corrupt_file(tmp_path, content, message):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        TiktokenTokenizer.from_file(path)
