"""Byte-level BPE helpers: the alphabet that spells raw bytes as visible characters, and the
pre-tokenizer split patterns byte-level vocabularies (Llama 3, SmolLM2, GPT-2, ...) were trained with.

A byte-level vocabulary (GPT-2 lineage, and llama.cpp's "gpt2" GGUF model) stores every token as a
string where each byte is one character of a 256-character alphabet: printable Latin-1 bytes stand
for themselves and the rest (controls, space, NBSP, soft hyphen) are shifted to U+0100 and up, so
" the" is stored as "Ġthe".
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)


def _build_alphabet() -> list[str]:
    """The character spelling each byte 0..255."""
    visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars: dict[int, str] = {b: chr(b) for b in visible}
    shifted = 0
    for b in range(256):
        if b not in chars:
            # The invisible bytes take the code points right after Latin-1, in byte order.
            chars[b] = chr(0x100 + shifted)
            shifted += 1
    return [chars[b] for b in range(256)]


BYTE_TO_CHAR: list[str] = _build_alphabet()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
# str.translate maps each alphabet character to the Latin-1 character of its byte, so that
# `.encode("latin-1")` then yields the raw bytes in one C-level pass.
_TO_LATIN1 = {ord(c): b for c, b in CHAR_TO_BYTE.items()}
_OUTSIDE_ALPHABET = re.compile("[^" + re.escape("".join(BYTE_TO_CHAR)) + "]")


def spell_bytes(data: bytes) -> str:
    """The byte-level spelling of raw bytes (b' hi' -> 'Ġhi')."""
    return "".join(BYTE_TO_CHAR[b] for b in data)


def token_to_bytes(token: str) -> bytes:
    """Raw bytes of a byte-level vocabulary entry.

    A token written with characters outside the alphabet (an added token stored as plain text, such
    as one holding a real space) is not byte-level spelled; its bytes are its UTF-8 text, which is also
    what Hugging Face's ByteLevel decoder falls back to.
    """
    if _OUTSIDE_ALPHABET.search(token):
        return token.encode("utf-8")
    return token.translate(_TO_LATIN1).encode("latin-1")


# --- pre-tokenizer split patterns -------------------------------------------------------------------
# Each vocabulary kind is split by a sequence of regexes applied one after another (each one splits
# the pieces left by the previous one, keeping matched and unmatched parts), as llama.cpp does.

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2 differs from Llama 3 only in splitting numbers into single digits.
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT4O_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_LLAMA3 = (LLAMA3_PATTERN,)
_DIGITS_THEN_GPT2 = (r"\p{N}", GPT2_PATTERN)  # SmolLM2/StarCoder: every digit alone, then GPT-2
_GPT2 = (GPT2_PATTERN,)
_QWEN2 = (QWEN2_PATTERN,)
# llama.cpp's fallback for a vocabulary that names no known pre-tokenizer.
DEFAULT_SPLITS: tuple[str, ...] = (
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_PATTERN,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
)

# `tokenizer.ggml.pre` -> split patterns, after llama.cpp's table of the same names.
GGUF_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        [
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "dbrx",
            "smaug-bpe",
            "chatglm-bpe",
            "pixtral",
            "midm-2.0",
            "lfm2",
        ],
        _LLAMA3,
    ),
    **dict.fromkeys(
        ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"], _DIGITS_THEN_GPT2
    ),
    **dict.fromkeys(
        [
            "gpt2",
            "gpt-2",
            "phi-2",
            "roberta-bpe",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "jina-es",
            "jina-de",
            "jina-v1-en",
            "jina-v2-es",
            "jina-v2-de",
            "jina-v2-code",
            "gigachat",
        ],
        _GPT2,
    ),
    **dict.fromkeys(["qwen2", "stablelm2", "megrez", "deepseek-r1-qwen", "hunyuan"], _QWEN2),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", GPT2_PATTERN, r"[0-9][0-9][0-9]"),
    "tekken": (TEKKEN_PATTERN,),
    **dict.fromkeys(["gpt-4o", "llama4", "minimax-m2"], (GPT4O_PATTERN,)),
    "default": DEFAULT_SPLITS,
}

# Vocabularies whose whole pre-token is looked up before merging (Hugging Face's `ignore_merges`);
# Llama 3's tokenizer.json and tiktoken both work this way.
GGUF_PRE_IGNORE_MERGES = frozenset(["llama3", "llama-v3", "llama-bpe", "falcon3", "tekken"])


def splits_for_pre(pre: str | None) -> tuple[str, ...]:
    """Split patterns for a GGUF `tokenizer.ggml.pre` name; unknown names get llama.cpp's default."""
    if pre in GGUF_PRE_SPLITS:
        return GGUF_PRE_SPLITS[pre]
    log.warning(
        "GGUF pre-tokenizer %r is not known to llamarun; splitting text with llama.cpp's default rules, "
        "so token ids may differ from the model's own tokenizer",
        pre,
    )
    return DEFAULT_SPLITS
