"""GGUF vocabularies: byte-level BPE checked against Transformers' GGUF tokenizer (the default model)
and Meta's Llama 3 tokenizer; SentencePiece checked by hand-computed expectations."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from llamarun.errors import CheckpointError, UnsupportedError
from llamarun.loaders.gguf.reader import read_gguf
from llamarun.text.byte_level import spell_bytes
from llamarun.text.gguf_tokenizer import tokenizer_from_gguf

TEXTS = [
    "Hello, world! How are you doing today?",
    "日本語のテキストです。東京は今日も晴れています。",
    "สวัสดีครับ วันนี้อากาศดีมาก",
    "नमस्ते दुनिया, यह हिंदी का एक वाक्य है।",
    "emoji 😀👍🏽🇯🇵 👨‍👩‍👧 ❤️",
    "def f(x):\n\treturn x ** 2  # square\r\n\nclass A:\n    pass\n",
    "tabs\t\tand  multiple   spaces\r\nwindows line\n\n\ntrailing   ",
    "   leading spaces",
    "digits 1234567890 3.14159 1,000,000 and 42",
    "I'm sure you're right, it's WE'LL",
    "nbsp\u00a0zero\u200bwidth\u3000space",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def smol_meta(default_gguf: Path) -> dict:
    return read_gguf(default_gguf).metadata


@pytest.fixture(scope="module")
def smol(smol_meta):
    return tokenizer_from_gguf(smol_meta)


@pytest.fixture(scope="module")
def smol_hf(request):
    pytest.importorskip("transformers")
    return request.getfixturevalue("default_hf_tokenizer")  # built once per session (tests/conftest.py)


@pytest.mark.parametrize("text", TEXTS)
def test_default_model_matches_transformers(smol, smol_hf, text):
    ids = smol.encode(text)
    assert ids == smol_hf.encode(text, add_special_tokens=False)
    assert smol.decode(ids) == text
    assert smol.decode(ids) == smol_hf.decode(ids, clean_up_tokenization_spaces=False)
    assert smol.decode(ids, skip_special=True) == smol_hf.decode(
        ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


def test_default_model_digits_split_one_by_one(smol):
    # SmolLM2's own tokenizer puts every digit in its own piece ("smollm" pre-tokenizer).
    ids = smol.encode("x 2024")
    assert [smol.decode([i]) for i in ids] == ["x", " ", "2", "0", "2", "4"]


def test_default_model_special_tokens(smol, smol_meta):
    assert (smol.bos_id, smol.eos_id) == (1, 2)
    assert smol.add_bos is False
    assert smol.vocab_size == len(smol_meta["tokenizer.ggml.tokens"]) == 49152
    control = {i for i, t in enumerate(smol_meta["tokenizer.ggml.token_type"]) if t == 3}
    assert smol.special_ids == control
    assert smol.token_to_id("<|im_end|>") == 2
    text = "<|im_start|>user\nhi<|im_end|>"
    assert smol.encode(text)[0] == 1
    as_text = smol.encode(text, allow_special=False)
    assert not set(as_text) & smol.special_ids
    assert smol.decode(as_text) == text
    assert smol.decode(smol.encode(text), skip_special=True) == "user\nhi"
    assert smol.encode("hi", add_bos=True)[0] == 1


def test_default_model_builds_fast(smol_meta):
    best = min(_timed(lambda: tokenizer_from_gguf(smol_meta)) for _ in range(3))
    assert best < 0.5


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- Llama 3 as a "gpt2"/"llama-bpe" GGUF vocabulary, checked against Meta's tokenizer ----------------


def _llama3_gguf_metadata() -> dict:
    """What llama.cpp's converter writes for Llama 3: byte-level spelled tokens, merges, token types."""
    from llama_models.llama3 import tokenizer as meta_tokenizer

    from llamarun.text.tiktoken_tokenizer import SPECIAL_TOKENS, load_bpe_ranks

    ranks = load_bpe_ranks(Path(meta_tokenizer.__file__).parent / "tokenizer.model")
    tokens = [spell_bytes(b) for b, _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    # tiktoken joins the adjacent pair whose joined token ranks lowest: as BPE merges, that is every
    # (left, right) split of a token into two tokens, ordered by the joined token's rank.
    index = {t: i for i, t in enumerate(tokens)}
    merges = [
        f"{tok[:cut]} {tok[cut:]}"
        for tok in tokens
        for cut in range(1, len(tok))
        if tok[:cut] in index and tok[cut:] in index
    ]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens + list(SPECIAL_TOKENS),
        "tokenizer.ggml.token_type": np.array([1] * len(tokens) + [3] * len(SPECIAL_TOKENS), dtype=np.int32),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 128000,
        "tokenizer.ggml.eos_token_id": 128009,
    }


def test_llama_bpe_vocabulary_matches_meta():
    llama3 = pytest.importorskip("llama_models.llama3.tokenizer")
    meta = llama3.Tokenizer.get_instance()
    ours = tokenizer_from_gguf(_llama3_gguf_metadata())
    assert ours.add_bos is True  # llama.cpp's default for the Llama 3 pre-tokenizer
    for text in TEXTS + ["<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", "1234567 12 123"]:
        assert ours.encode(text) == meta.encode(text, bos=False, eos=False, allowed_special="all"), text
        assert ours.encode(text, allow_special=False) == meta.encode(text, bos=False, eos=False), text


# --- pre-tokenizer choice --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pre, pieces",
    [
        ("smollm", ["Hi", "Ġ", "1", "2", "3", "4", "5", "!!"]),  # every digit alone
        ("llama-bpe", ["Hi", "Ġ", "123", "45", "!!"]),  # numbers in groups of up to three
        ("gpt2", ["Hi", "Ġ12345", "!!"]),
        ("qwen2", ["Hi", "Ġ", "1", "2", "3", "4", "5", "!!"]),
        ("default", ["Hi", "Ġ", "123", "45", "!!"]),  # llama.cpp's fallback rules
    ],
)
def test_pre_tokenizer_splits_by_name(smol_meta, pre, pieces):
    tok = tokenizer_from_gguf({**smol_meta, "tokenizer.ggml.pre": pre})
    assert [p for p, _ in tok.backend.pre_tokenizer.pre_tokenize_str("Hi 12345!!")] == pieces


def test_unknown_pre_tokenizer_warns(smol_meta, caplog):
    with caplog.at_level(logging.WARNING):
        tok = tokenizer_from_gguf({**smol_meta, "tokenizer.ggml.pre": "brand-new-model"})
    assert "brand-new-model" in caplog.text
    assert tok.decode(tok.encode("still works 123")) == "still works 123"


# --- SentencePiece ("llama") vocabularies -----------------------------------------------------------

PIECES = [
    "▁",
    "h",
    "e",
    "l",
    "o",
    "w",
    "r",
    "d",
    "a",
    "b",
    "c",
    "ll",
    "llo",
    "▁h",
    "▁he",
    "▁hello",
    "▁w",
    "or",
    "▁wor",
    "ld",
    "▁world",
    "ab",
    "bc",
]


def _sp_metadata(pieces=PIECES, byte_tokens=True, **extra) -> dict:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, 3, 3]
    if byte_tokens:
        tokens += [f"<0x{b:02X}>" for b in range(256)]
        types += [6] * 256
    first_piece = len(tokens)
    tokens += list(pieces) + ["<|user|>"]
    types += [1] * len(pieces) + [4]
    # Earlier pieces score higher, like a real SentencePiece model; "bc" outranks "ab".
    scores = [0.0] * first_piece + [-float(i) for i in range(len(pieces))] + [0.0]
    if "ab" in pieces:
        scores[first_piece + pieces.index("bc")] = 10.0
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array(types, dtype=np.int32),
        "tokenizer.ggml.scores": np.array(scores, dtype=np.float32),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    meta.update(extra)
    return meta


def _pieces(tok, ids):
    return [tok.backend.id_to_token(i) for i in ids]


def test_sentencepiece_words_and_spaces():
    tok = tokenizer_from_gguf(_sp_metadata())
    assert tok.add_bos is True and tok.strips_leading_space is True
    assert _pieces(tok, tok.encode("hello world")) == ["▁hello", "▁world"]
    # A leading space adds to the dummy prefix; decode strips only the dummy one.
    assert _pieces(tok, tok.encode(" hello  world")) == ["▁", "▁hello", "▁", "▁world"]
    assert tok.decode(tok.encode(" hello  world")) == " hello  world"
    assert tok.decode(tok.encode("hello world")) == "hello world"
    assert tok.encode("hello", add_bos=True)[0] == 1


def test_sentencepiece_byte_fallback():
    tok = tokenizer_from_gguf(_sp_metadata())
    ids = tok.encode("hé!")
    # "é" is U+00E9 = C3 A9 in UTF-8 and "!" is 0x21: neither is a piece, so both become bytes.
    assert _pieces(tok, ids) == ["▁h", "<0xC3>", "<0xA9>", "<0x21>"]
    assert tok.token_bytes(ids[1]) == b"\xc3"
    assert tok.decode(ids) == "hé!"
    assert tok.decode(ids[:2]) == "h\ufffd"


def test_sentencepiece_merges_follow_scores():
    # "bc" scores higher than "ab", so "abc" becomes a + bc even though "ab" comes first.
    tok = tokenizer_from_gguf(_sp_metadata(**{"tokenizer.ggml.add_space_prefix": False}))
    assert _pieces(tok, tok.encode("abc")) == ["a", "bc"]
    assert tok.strips_leading_space is False
    assert tok.decode(tok.encode(" abc")) == " abc"


def test_sentencepiece_special_and_user_defined_tokens():
    tok = tokenizer_from_gguf(_sp_metadata())
    # Text after a special token gets the dummy space again, as in llama.cpp.
    assert _pieces(tok, tok.encode("<s>hello")) == ["<s>", "▁hello"]
    assert 1 not in tok.encode("<s>hello", allow_special=False)
    assert tok.decode(tok.encode("<s>hello", allow_special=False)) == "<s>hello"
    # User-defined tokens are matched whole either way, and are not skipped as special.
    for allow in (True, False):
        assert "<|user|>" in _pieces(tok, tok.encode("hello<|user|>world", allow_special=allow))
    assert tok.special_ids == {0, 1, 2}
    assert tok.decode(tok.encode("<s>hello world</s>"), skip_special=True) == "hello world"


def test_sentencepiece_unknown_without_byte_tokens():
    tok = tokenizer_from_gguf(_sp_metadata(byte_tokens=False))
    assert _pieces(tok, tok.encode("hé")) == ["▁h", "<unk>"]


def test_sentencepiece_agrees_with_transformers_on_plain_text(tmp_path):
    """Transformers builds the same vocabulary from a real GGUF file; on text that neither starts with
    a space nor holds special tokens (where its Metaspace rules differ from llama.cpp) ids agree."""
    transformers = pytest.importorskip("transformers")
    gguf = pytest.importorskip("gguf")
    meta = _sp_metadata()
    writer = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"].tolist())
    writer.add_token_scores(meta["tokenizer.ggml.scores"].tolist())
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_tensor(
        "token_embd.weight", np.zeros((len(meta["tokenizer.ggml.tokens"]), 4), dtype=np.float32)
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours = tokenizer_from_gguf(read_gguf(tmp_path / "tiny.gguf").metadata)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    for text in ["hello world", "héllo wörld!", "abc hello", "\n\nhello\tworld", "日本"]:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == hf.decode(ids) == text


# --- bad metadata ------------------------------------------------------------------------------------


def test_unknown_tokenizer_model_is_unsupported(smol_meta):
    with pytest.raises(UnsupportedError, match="'bert'"):
        tokenizer_from_gguf({**smol_meta, "tokenizer.ggml.model": "bert"})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tokenizer.ggml.model": None}, "no tokenizer"),
        ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
        ({"tokenizer.ggml.merges": None}, "tokenizer.ggml.merges"),
        ({"tokenizer.ggml.merges": ["Ġt"]}, "not 'left right'"),
        ({"tokenizer.ggml.merges": ["Ġ nosuchtoken"]}, "inconsistent"),
        ({"tokenizer.ggml.token_type": np.array([1, 1], dtype=np.int32)}, "2 entries"),
    ],
)
def test_corrupt_metadata_gives_clear_error(smol_meta, change, message):
    meta = {k: v for k, v in {**smol_meta, **change}.items() if v is not None}
    with pytest.raises(CheckpointError, match=message):
        tokenizer_from_gguf(meta)
