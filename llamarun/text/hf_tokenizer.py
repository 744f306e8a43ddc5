"""A tokenizer run by Hugging Face's `tokenizers` library: a model folder's tokenizer.json, or a
vocabulary built from GGUF metadata (see gguf_tokenizer.py).

Encoding is done by the library; decoding is done here from a table of each token's raw bytes, so
that `decode` and the incremental detokenizer agree byte for byte (see Tokenizer's docstring).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend

from llamarun.errors import CheckpointError, LlamarunError, ModelNotFoundError
from llamarun.text.byte_level import token_to_bytes
from llamarun.text.tokenizer import Tokenizer

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
SPIECE_SPACE = "\u2581"  # "▁", SentencePiece's stand-in for a space


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` behind llamarun's Tokenizer interface."""

    def __init__(
        self,
        backend: Backend,
        *,
        token_bytes: list[bytes],
        bos_id: int | None,
        eos_id: int | None,
        special_ids: frozenset[int],
        add_bos: bool,
        strips_leading_space: bool = False,
    ) -> None:
        self._backend = backend
        self._plain_backend: Backend | None = None  # built on first allow_special=False
        self._token_bytes = token_bytes
        self.vocab_size = len(token_bytes)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.special_ids = special_ids
        self.add_bos = add_bos
        self.strips_leading_space = strips_leading_space

    @property
    def backend(self) -> Backend:
        """The underlying `tokenizers.Tokenizer` (for grammar engines that need the vocabulary)."""
        return self._backend

    @classmethod
    def from_folder(cls, folder: Path) -> HFTokenizer:
        """Load tokenizer.json (+ tokenizer_config.json) from a Hugging Face model folder."""
        folder = Path(folder)
        if folder.is_file() and folder.name == "tokenizer.json":
            folder = folder.parent
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelNotFoundError(
                f"no tokenizer.json in {folder}",
                hint="a Hugging Face model folder needs tokenizer.json; Meta checkpoints use tokenizer.model",
            )
        spec = _read_json(path)
        try:
            backend = Backend.from_file(str(path))
        except Exception as exc:
            raise CheckpointError(
                f"{path} is not a valid tokenizer: {str(exc)[:200]}",
                hint="download tokenizer.json again, or upgrade the tokenizers package",
            ) from None
        config_path = folder / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        return cls._from_spec(backend, spec, config)

    @classmethod
    def _from_spec(cls, backend: Backend, spec: dict[str, Any], config: dict[str, Any]) -> HFTokenizer:
        special = {t["id"] for t in spec.get("added_tokens") or () if t.get("special")}
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            if isinstance(entry, dict) and entry.get("special") and str(key).isdigit():
                special.add(int(key))
        bos_id = _token_id(backend, config.get("bos_token"))
        eos_id = _token_id(backend, config.get("eos_token"))
        template_first = _template_first_special(spec.get("post_processor"))
        if bos_id is None and template_first is not None:
            bos_id = backend.token_to_id(template_first)
        add_bos = config.get("add_bos_token")
        if not isinstance(add_bos, bool):
            add_bos = template_first is not None and backend.token_to_id(template_first) == bos_id
        table, strips = token_bytes_table(backend, spec.get("decoder"))
        return cls(
            backend,
            token_bytes=table,
            bos_id=bos_id,
            eos_id=eos_id,
            special_ids=frozenset(special),
            add_bos=add_bos,
            strips_leading_space=strips,
        )

    def encode(self, text: str, *, add_bos: bool = False, allow_special: bool = True) -> list[int]:
        """Token ids of `text` (no post-processor: bos only when `add_bos`)."""
        backend = self._backend if allow_special else self._plain()
        ids = backend.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD."""
        table = self._token_bytes
        if len(ids) and (min(ids) < 0 or max(ids) >= self.vocab_size):
            self._raise_bad_id(ids)
        if skip_special:
            special = self.special_ids
            data = b"".join([table[i] for i in ids if i not in special])
        else:
            data = b"".join([table[i] for i in ids])
        if self.strips_leading_space and data[:1] == b" ":
            data = data[1:]
        return data.decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token (special tokens: their text)."""
        if not 0 <= token_id < self.vocab_size:
            self._raise_bad_id((token_id,))
        return self._token_bytes[token_id]

    def token_to_id(self, token: str) -> int | None:
        """Id of a token by its vocabulary spelling ('<|im_end|>', 'Ġthe', '▁the'), or None."""
        return self._backend.token_to_id(token)

    def _plain(self) -> Backend:
        # `encode_special_tokens` is a switch on the whole backend, so a second copy keeps it set
        # instead of flipping shared state under concurrent callers.
        if self._plain_backend is None:
            plain = Backend.from_str(self._backend.to_str())
            plain.encode_special_tokens = True
            self._plain_backend = plain
        return self._plain_backend

    def _raise_bad_id(self, ids: Sequence[int]) -> None:
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        raise LlamarunError(
            f"token id {bad!r} is outside the vocabulary (0..{self.vocab_size - 1})",
            hint="the ids do not belong to this model's tokenizer",
        )


def token_bytes_table(backend: Backend, decoder: dict[str, Any] | None) -> tuple[list[bytes], bool]:
    """Each id's raw bytes, worked out from the kind of decoder the tokenizer.json names, and whether
    decoding strips one leading space."""
    steps = _flatten_decoder(decoder)
    kinds = {step.get("type") for step in steps}
    strips = any(
        (s.get("type") == "Strip" and s.get("content") == " " and int(s.get("start", 0)) >= 1)
        or (s.get("type") == "Metaspace" and _metaspace_prepends(s))
        for s in steps
    )
    vocab = backend.get_vocab(with_added_tokens=True)
    by_id = [""] * (max(vocab.values(), default=-1) + 1)
    for token, index in vocab.items():
        by_id[index] = token
    if "ByteLevel" in kinds:
        return [token_to_bytes(t) for t in by_id], strips
    spiece = "Metaspace" in kinds or any(
        s.get("type") == "Replace" and (s.get("pattern") or {}).get("String") == SPIECE_SPACE for s in steps
    )
    if spiece:
        fallback = "ByteFallback" in kinds
        return [sentencepiece_piece_bytes(t, fallback) for t in by_id], strips
    # Any other decoder: trust the library, token by token.
    table = [backend.decode([i], skip_special_tokens=False).encode("utf-8") for i in range(len(by_id))]
    return table, False


def sentencepiece_piece_bytes(piece: str, byte_fallback: bool = True) -> bytes:
    """Raw bytes of a SentencePiece-style piece: '▁' is a space and '<0xNN>' is byte NN."""
    if byte_fallback:
        match = _BYTE_TOKEN.fullmatch(piece)
        if match:
            return bytes([int(match.group(1), 16)])
    return piece.replace(SPIECE_SPACE, " ").encode("utf-8")


def _flatten_decoder(decoder: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not decoder:
        return []
    if decoder.get("type") == "Sequence":
        return [step for child in decoder.get("decoders") or () for step in _flatten_decoder(child)]
    return [decoder]


def _metaspace_prepends(step: dict[str, Any]) -> bool:
    scheme = step.get("prepend_scheme")
    if scheme is None:  # tokenizer.json files older than prepend_scheme
        return bool(step.get("add_prefix_space", True))
    return scheme in ("first", "always")


def _template_first_special(post: dict[str, Any] | None) -> str | None:
    """The special token a TemplateProcessing post-processor puts before a single sequence."""
    if not post:
        return None
    if post.get("type") == "Sequence":
        for child in post.get("processors") or ():
            found = _template_first_special(child)
            if found is not None:
                return found
        return None
    if post.get("type") == "TemplateProcessing":
        single = post.get("single") or []
        if single and "SpecialToken" in single[0]:
            return single[0]["SpecialToken"].get("id")
    return None


def _token_id(backend: Backend, token: Any) -> int | None:
    if isinstance(token, dict):  # {"content": "<s>", "lstrip": false, ...}
        token = token.get("content")
    return backend.token_to_id(token) if isinstance(token, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"cannot read {path}: {exc}", hint="the file looks corrupt; download it again"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} does not hold a JSON object", hint="the file looks corrupt; download it again"
        )
    return data
