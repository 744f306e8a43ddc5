"""Meta's Llama 3 tokenizer: a tiktoken BPE ranks file (`tokenizer.model`) plus 256 special tokens.

Token ids match Meta's reference `llama_models.llama3.tokenizer.Tokenizer` exactly, including the way
it cuts very long inputs before handing them to tiktoken (which would otherwise panic or crawl).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from pathlib import Path

from llamarun.errors import CheckpointError, LlamarunError, ModelNotFoundError
from llamarun.text.byte_level import LLAMA3_PATTERN
from llamarun.text.tokenizer import Tokenizer

# The first twelve special tokens have names; the rest are reserved, numbered on from 2.
NAMED_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message: the model waits for a tool result
    "<|eot_id|>",  # end of turn
    "<|python_tag|>",
    "<|image|>",
)
NUM_SPECIAL_TOKENS = 256
SPECIAL_TOKENS: tuple[str, ...] = NAMED_SPECIAL_TOKENS + tuple(
    f"<|reserved_special_token_{n}|>" for n in range(2, 2 + NUM_SPECIAL_TOKENS - len(NAMED_SPECIAL_TOKENS))
)

# tiktoken's Rust core panics somewhere above ~400k characters in one call, and its regex crawls on
# very long runs of whitespace (or of non-whitespace). Meta cuts the text into 400k-character chunks,
# then cuts any run of one kind longer than 25k characters; we cut at the very same places, because
# where text is cut decides how it is merged.
MAX_CHUNK_CHARS = 400_000
MAX_RUN_CHARS = 25_000


def _long_run_regex(max_run: int) -> re.Pattern[str]:
    # Python's \s is exactly str.isspace, which is what Meta tests. The lookbehinds let a match start
    # only where a run starts, so the scan stays linear even over many runs just under the limit.
    return re.compile(rf"(?<!\s)\s{{{max_run + 1},}}|(?<!\S)\S{{{max_run + 1},}}")


_LONG_RUN = _long_run_regex(MAX_RUN_CHARS)


def split_for_tiktoken(
    text: str, chunk_chars: int = MAX_CHUNK_CHARS, run_chars: int = MAX_RUN_CHARS
) -> list[str]:
    """Pieces of `text` that Meta's tokenizer encodes one by one (usually just `[text]`)."""
    long_run = _LONG_RUN if run_chars == MAX_RUN_CHARS else _long_run_regex(run_chars)
    pieces: list[str] = []
    for start in range(0, len(text), chunk_chars):
        chunk = text[start : start + chunk_chars]
        cut = 0
        # Runs are found per chunk: a run never continues across a chunk boundary.
        for run in long_run.finditer(chunk):
            # A run of n characters is cut after every run_chars of them.
            for at in range(run.start() + run_chars, run.end(), run_chars):
                pieces.append(chunk[cut:at])
                cut = at
        pieces.append(chunk[cut:])
    return pieces or [""]


def load_bpe_ranks(path: Path) -> dict[bytes, int]:
    """Read a tiktoken ranks file: one `base64(token) rank` pair per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(
            f"{path} is not a tiktoken BPE file (it is binary; a SentencePiece model?)",
            hint="Llama 3 needs Meta's tiktoken tokenizer.model, or use the model's tokenizer.json",
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read tokenizer file {path}: {exc.strerror}") from None
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise CheckpointError(
                f"{path} line {number} is not 'base64-token rank': {line[:60]!r}",
                hint="the tiktoken tokenizer.model looks corrupt; download it again",
            ) from None
    if not ranks:
        raise CheckpointError(f"{path} holds no tokens", hint="download the tokenizer.model again")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(
            f"{path} has ranks that are not 0..{len(ranks) - 1} without gaps or repeats",
            hint="the tiktoken tokenizer.model looks corrupt; download it again",
        )
    return ranks


class TiktokenTokenizer(Tokenizer):
    """Llama 3 / 3.1 / 3.2 / 3.3 tokenizer from Meta's tiktoken `tokenizer.model`."""

    def __init__(self, mergeable_ranks: dict[bytes, int], name: str = "llama3") -> None:
        import tiktoken

        num_base = len(mergeable_ranks)
        self.special_tokens: dict[str, int] = {tok: num_base + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self._encoding = tiktoken.Encoding(
            name=name,
            pat_str=LLAMA3_PATTERN,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self.special_tokens,
        )
        self.vocab_size = num_base + len(SPECIAL_TOKENS)
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.eot_id = self.special_tokens["<|eot_id|>"]
        self.eom_id = self.special_tokens["<|eom_id|>"]
        # Meta's generation stops on any of these.
        self.stop_ids = (self.eos_id, self.eom_id, self.eot_id)
        self.special_ids = frozenset(self.special_tokens.values())
        self.add_bos = True
        self._special_bytes = {i: tok.encode("utf-8") for tok, i in self.special_tokens.items()}

    @classmethod
    def from_file(cls, path: Path) -> TiktokenTokenizer:
        """Load Meta's `tokenizer.model` (a file, or a folder that holds one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.model"
        if not path.is_file():
            raise ModelNotFoundError(
                f"tokenizer file not found: {path}",
                hint="a Meta Llama 3 checkpoint has tokenizer.model next to params.json",
            )
        return cls(load_bpe_ranks(path), name=path.name)

    def encode(self, text: str, *, add_bos: bool = False, allow_special: bool = True) -> list[int]:
        """Token ids of `text`, identical to Meta's `Tokenizer.encode`."""
        allowed: str | set[str] = "all" if allow_special else set()
        ids = [self.bos_id] if add_bos else []
        for piece in split_for_tiktoken(text):
            # disallowed_special=() makes special-token text plain text instead of an error.
            ids.extend(self._encoding.encode(piece, allowed_special=allowed, disallowed_special=()))
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD."""
        self._check_ids(ids)
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        return self._encoding.decode_bytes(list(ids)).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token (special tokens: their text)."""
        self._check_ids((token_id,))
        special = self._special_bytes.get(token_id)
        return special if special is not None else self._encoding.decode_single_token_bytes(token_id)

    def token_to_id(self, token: str) -> int | None:
        """Id of a special token name or of a token's exact text, or None."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        try:
            return self._encoding.encode_single_token(token.encode("utf-8"))
        except KeyError:
            return None

    def _check_ids(self, ids: Sequence[int]) -> None:
        if len(ids) and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise LlamarunError(
                f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})",
                hint="the ids do not belong to this model's tokenizer",
            )
