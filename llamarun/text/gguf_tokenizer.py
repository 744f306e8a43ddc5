"""The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, built as a fast
`tokenizers` pipeline and served through HFTokenizer.

Two vocabulary kinds are supported, named by `tokenizer.ggml.model`:
  "gpt2"   byte-level BPE (Llama 3, SmolLM2, Qwen2, ...): tokens + merges, and a text-splitting regex
           chosen by `tokenizer.ggml.pre` (see byte_level.py)
  "llama"  SentencePiece BPE (Llama 2, TinyLlama, Mistral v0.1): tokens ranked by score, "▁" for a
           space, and "<0xNN>" tokens for bytes no piece covers
Behaviour follows llama.cpp, the reference runtime for GGUF files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend

from llamarun.errors import CheckpointError, UnsupportedError
from llamarun.text.byte_level import GGUF_PRE_IGNORE_MERGES, splits_for_pre, token_to_bytes
from llamarun.text.hf_tokenizer import SPIECE_SPACE, HFTokenizer, sentencepiece_piece_bytes

log = logging.getLogger(__name__)

# llama.cpp's token types (`tokenizer.ggml.token_type`).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SUPPORTED_MODELS = ("gpt2", "llama")


def tokenizer_from_gguf(meta: Mapping[str, Any]) -> HFTokenizer:
    """Build the tokenizer described by GGUF metadata (as read by `read_gguf(path).metadata`)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind is None:
        raise CheckpointError(
            "the GGUF file has no tokenizer (no tokenizer.ggml.model key)",
            hint="re-convert the model with a current llama.cpp convert script",
        )
    if kind not in SUPPORTED_MODELS:
        raise UnsupportedError(
            f"GGUF tokenizer model {kind!r} is not supported",
            hint=f"llamarun reads {', '.join(map(repr, SUPPORTED_MODELS))} vocabularies",
        )
    tokens = _string_list(meta, "tokenizer.ggml.tokens")
    types = _int_list(meta.get("tokenizer.ggml.token_type"), len(tokens), "tokenizer.ggml.token_type")
    if kind == "gpt2":
        pre = meta.get("tokenizer.ggml.pre")
        backend, table = _byte_level(tokens, types, _string_list(meta, "tokenizer.ggml.merges"), pre)
        add_bos_default = pre in GGUF_PRE_IGNORE_MERGES  # llama.cpp: the Llama 3 family and Tekken
        strips = False
    else:
        prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        unk = _token_id(meta, "tokenizer.ggml.unknown_token_id", len(tokens))
        backend, table = _sentencepiece(tokens, types, meta.get("tokenizer.ggml.scores"), unk, prefix)
        add_bos_default = True
        strips = prefix
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    special = frozenset(i for i, t in enumerate(types) if t in (CONTROL, UNKNOWN))
    return HFTokenizer(
        backend,
        token_bytes=table,
        bos_id=_token_id(meta, "tokenizer.ggml.bos_token_id", len(tokens)),
        eos_id=_token_id(meta, "tokenizer.ggml.eos_token_id", len(tokens)),
        special_ids=special,
        add_bos=add_bos_default if add_bos is None else bool(add_bos),
        strips_leading_space=strips,
    )


def _byte_level(
    tokens: list[str], types: list[int], merges: list[str], pre: str | None
) -> tuple[Backend, list[bytes]]:
    vocab = _vocab(tokens)
    pairs = []
    for line in merges:
        left, sep, right = line.partition(" ")
        if not sep:
            raise CheckpointError(
                f"GGUF merge {line!r} is not 'left right'", hint="the GGUF file looks corrupt"
            )
        pairs.append((left, right))
    ignore_merges = pre in GGUF_PRE_IGNORE_MERGES
    backend = _new_backend(lambda: models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in splits_for_pre(pre)]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    _add_vocab_tokens(backend, tokens, types)
    return backend, [token_to_bytes(t) for t in tokens]


def _sentencepiece(
    tokens: list[str], types: list[int], scores: Any, unk_id: int | None, add_space_prefix: bool
) -> tuple[Backend, list[bytes]]:
    vocab = _vocab(tokens)
    ranks = (
        _float_list(scores, len(tokens)) if scores is not None else [-float(i) for i in range(len(tokens))]
    )
    has_bytes = BYTE in types
    unk = tokens[unk_id] if unk_id is not None else None
    merges = merges_from_scores(tokens, ranks, types)
    backend = _new_backend(
        lambda: models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=has_bytes)
    )
    # llama.cpp puts a space before every stretch of plain text (the start, and after each special
    # token): a normalizer runs per stretch between added tokens, which gives just that.
    to_spiece = normalizers.Replace(" ", SPIECE_SPACE)
    backend.normalizer = (
        normalizers.Sequence([normalizers.Prepend(SPIECE_SPACE), to_spiece])
        if add_space_prefix
        else to_spiece
    )
    steps = [decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence([*steps, decoders.Strip(" ", 1, 0)] if add_space_prefix else steps)
    _add_vocab_tokens(backend, tokens, types)
    table = [
        sentencepiece_piece_bytes(tok, byte_fallback=True)
        if typ == BYTE
        else tok.encode("utf-8")
        if typ in (CONTROL, UNKNOWN)
        else tok.replace(SPIECE_SPACE, " ").encode("utf-8")
        for tok, typ in zip(tokens, types, strict=True)
    ]
    return backend, table


def merges_from_scores(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]
) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's rule "join the adjacent pair whose joined piece scores
    highest": every split of a mergeable piece into two vocabulary pieces, best joined score first."""
    index = {t: i for i, t in reversed(list(enumerate(tokens)))}
    found: list[tuple[float, int, int, str, str]] = []
    for i, piece in enumerate(tokens):
        if types[i] not in (NORMAL, USER_DEFINED, UNUSED) or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                found.append((-scores[i], i, cut, left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def _add_vocab_tokens(backend: Backend, tokens: list[str], types: list[int]) -> None:
    """Control tokens become special added tokens (matched in text only when specials are allowed);
    user-defined ones are always matched whole, as llama.cpp does."""
    control = [
        AddedToken(t, special=True, normalized=False)
        for t, k in zip(tokens, types, strict=True)
        if k in (CONTROL, UNKNOWN)
    ]
    user = [
        AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED
    ]
    if control:
        backend.add_special_tokens(control)
    if user:
        backend.add_tokens(user)


def _new_backend(build: Any) -> Backend:
    try:
        return Backend(build())
    except Exception as exc:
        raise CheckpointError(
            f"the GGUF tokenizer vocabulary is inconsistent: {str(exc)[:200]}",
            hint="the GGUF file looks corrupt",
        ) from None


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        # A repeated string keeps its first id, as llama.cpp's text -> id lookup does.
        vocab.setdefault(token, i)
    return vocab


def _string_list(meta: Mapping[str, Any], key: str) -> list[str]:
    value = meta.get(key)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(
            f"GGUF key {key} is missing or not a list of strings", hint="the GGUF file looks corrupt"
        )
    return list(value)


def _int_list(value: Any, n: int, key: str) -> list[int]:
    if value is None:
        return [NORMAL] * n
    values = value.tolist() if hasattr(value, "tolist") else list(value)
    if len(values) != n:
        raise CheckpointError(
            f"GGUF key {key} has {len(values)} entries for {n} tokens", hint="the GGUF file looks corrupt"
        )
    return [int(v) for v in values]


def _float_list(value: Any, n: int) -> list[float]:
    values = value.tolist() if hasattr(value, "tolist") else list(value)
    if len(values) != n:
        raise CheckpointError(
            f"GGUF key tokenizer.ggml.scores has {len(values)} entries for {n} tokens",
            hint="the GGUF file looks corrupt",
        )
    return [float(v) for v in values]


def _token_id(meta: Mapping[str, Any], key: str, n: int) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < n:
        log.warning("GGUF %s = %r is not a token id of this %d-token vocabulary; ignoring it", key, value, n)
        return None
    return int(value)
