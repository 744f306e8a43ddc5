"""Streaming detokenizer: pieces add up to decode() for any id sequence, never split a character,
and cost the same per token however long the stream is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamarun.loaders.gguf.reader import read_gguf
from llamarun.text.detokenizer import IncrementalDetokenizer
from llamarun.text.gguf_tokenizer import tokenizer_from_gguf
from llamarun.text.tiktoken_tokenizer import TiktokenTokenizer
from llamarun.text.tokenizer import Tokenizer

STREAM_TEXTS = [
    "日本語の文章をストリーミングします。東京タワー🗼と富士山🗻。",
    "emoji 😀👍🏽🇯🇵 👨‍👩‍👧 ❤️ and ✨ sparkles ✨",
    "สวัสดีครับ नमस्ते 你好世界",
]


@pytest.fixture(scope="module")
def tiktoken_tok() -> TiktokenTokenizer:
    llama3 = pytest.importorskip("llama_models.llama3.tokenizer")
    return TiktokenTokenizer.from_file(Path(llama3.__file__).parent / "tokenizer.model")


@pytest.fixture(scope="module")
def gguf_tok(default_gguf: Path):
    return tokenizer_from_gguf(read_gguf(default_gguf).metadata)


@pytest.fixture(scope="module")
def spiece_tok():
    """A SentencePiece vocabulary, whose decode strips the prepended space."""
    tokens = (
        ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "a", "▁a", "b", "▁▁", "ab"]
    )
    types = [2, 3, 3] + [6] * 256 + [1] * 6
    return tokenizer_from_gguf(
        {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": np.array(types, dtype=np.int32),
            "tokenizer.ggml.scores": np.array([0.0] * len(tokens), dtype=np.float32),
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
        }
    )


def _interesting_ids(tok: Tokenizer) -> list[int]:
    """Ids that stress the decoder: specials, lone bytes of multi-byte characters, CJK and emoji."""
    ids = sorted(tok.special_ids)[:20]
    for text in STREAM_TEXTS:
        ids += tok.encode(text)
    singles = [i for i in range(min(tok.vocab_size, 130_000)) if len(tok.token_bytes(i)) == 1]
    ids += [i for i in singles if tok.token_bytes(i)[0] >= 0x80]  # lead and continuation bytes
    ids += [i for i in singles if tok.token_bytes(i) == b" "]
    return sorted(set(ids))


def _stream(tok: Tokenizer, ids: Sequence[int], skip_special: bool) -> list[str]:
    detok = IncrementalDetokenizer(tok, skip_special=skip_special)
    return [detok.add(i) for i in ids] + [detok.flush()]


def _id_lists(tok: Tokenizer):
    interesting = _interesting_ids(tok)
    one = st.one_of(st.integers(0, tok.vocab_size - 1), st.sampled_from(interesting))
    return st.lists(one, max_size=40)


@pytest.mark.parametrize("which", ["tiktoken_tok", "gguf_tok", "spiece_tok"])
def test_pieces_add_up_to_decode_for_any_ids(request, which):
    tok = request.getfixturevalue(which)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ids=_id_lists(tok), skip=st.booleans())
    def check(ids, skip):
        pieces = _stream(tok, ids, skip)
        assert "".join(pieces) == tok.decode(ids, skip_special=skip)

    check()


@pytest.mark.parametrize("which", ["tiktoken_tok", "gguf_tok"])
@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_streaming_never_emits_replacement_characters(request, which, text):
    tok = request.getfixturevalue(which)
    ids = tok.encode(text)
    pieces = _stream(tok, ids, skip_special=True)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    if text != STREAM_TEXTS[-1]:
        # These texts really do split characters across tokens, so something had to be held back.
        assert any(not _is_utf8(tok.token_bytes(i)) for i in ids)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_unfinished_character_is_flushed_as_replacement(tiktoken_tok):
    ids = tiktoken_tok.encode("🗻")
    assert len(ids) > 1  # the emoji spans several byte tokens
    detok = IncrementalDetokenizer(tiktoken_tok)
    assert [detok.add(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.flush() == "\ufffd" == tiktoken_tok.decode(ids[:-1])


def test_special_tokens_skipped_or_kept(tiktoken_tok):
    ids = tiktoken_tok.encode("<|start_header_id|>assistant<|end_header_id|>\n\nHi!<|eot_id|>")
    assert "".join(_stream(tiktoken_tok, ids, skip_special=True)) == "assistant\n\nHi!"
    assert "".join(_stream(tiktoken_tok, ids, skip_special=False)).endswith("Hi!<|eot_id|>")


def test_leading_space_stripped_once(spiece_tok):
    ids = spiece_tok.encode("a a")  # ▁a ▁a
    assert _stream(spiece_tok, [1] + ids, skip_special=True) == ["", "a", " a", ""]
    assert "".join(_stream(spiece_tok, [1] + ids, skip_special=False)) == "<s> a a"


class _CountingTokenizer(Tokenizer):
    """Wraps a tokenizer and counts how many token ids each call makes it look at."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.touched = 0
        for name in ("vocab_size", "bos_id", "eos_id", "special_ids", "add_bos", "strips_leading_space"):
            setattr(self, name, getattr(inner, name))

    def encode(self, text, *, add_bos=False, allow_special=True):
        return self.inner.encode(text, add_bos=add_bos, allow_special=allow_special)

    def decode(self, ids, *, skip_special=False):
        self.touched += len(ids)
        return self.inner.decode(ids, skip_special=skip_special)

    def token_bytes(self, token_id):
        self.touched += 1
        return self.inner.token_bytes(token_id)

    def token_to_id(self, token):
        return self.inner.token_to_id(token)


def test_work_per_token_does_not_grow_with_length(tiktoken_tok):
    counting = _CountingTokenizer(tiktoken_tok)
    ids = tiktoken_tok.encode("日本語と emoji 😀 のテキスト。" * 400)
    detok = IncrementalDetokenizer(counting)
    per_token = []
    for i in ids:
        before = counting.touched
        detok.add(i)
        per_token.append(counting.touched - before)
    assert len(ids) > 3000
    assert max(per_token) <= 2  # no step re-reads earlier tokens
