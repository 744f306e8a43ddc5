"""What `/api/show` adds to a model's file facts: the served context and sampling defaults as Ollama's
`parameters` lines, and `tokenizer.ggml.*` keys for `verbose`.

Torch-free, like store_info.py: the context comes from the loaded model when there is one, else from
the server's setting; tokenizer facts from the loaded tokenizer or the GGUF header (whose token list
is only counted, never sent).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamarun.sampling.params import SamplingParams

if TYPE_CHECKING:
    from llamarun.server.model_manager import ModelManager
    from llamarun.store.describe import ModelInfo

DEFAULT_CONTEXT = 4096  # as llamarun.llm.loading (not imported here: it imports torch)
_PARAMETER_WIDTH = 30  # Ollama pads the names of its "name value" lines to this width


def served_context(manager: ModelManager, name: str, info: ModelInfo | None) -> int:
    """The context length `name` runs with: the loaded model's, else what the next load would give."""
    slot = manager.get(name)
    if slot is not None:
        return int(slot.served.context_length)
    ctx = manager.context_length or DEFAULT_CONTEXT
    trained = info.context_length if info is not None else None
    return min(ctx, trained) if trained else ctx


def parameters_text(num_ctx: int, model_parameters: dict[str, Any] | None = None) -> str:
    """Ollama's `parameters`: the sampling defaults requests get unless they set options, and num_ctx;
    a created model's own parameters replace them (`stop` once per string)."""
    d = SamplingParams()
    values: dict[str, Any] = {"temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p,
                              "repeat_penalty": d.repetition_penalty, "repeat_last_n": d.repeat_last_n,
                              "num_ctx": num_ctx}
    values |= model_parameters or {}
    lines = []
    for key, value in values.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<{_PARAMETER_WIDTH}} {json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines)


def tokenizer_keys(manager: ModelManager, name: str, path: Path, fmt: str) -> dict[str, Any]:
    """`tokenizer.ggml.*` facts: model type, token count, bos/eos ids (what is known of them)."""
    out: dict[str, Any] = {}
    if fmt == "gguf":
        try:
            stat = path.stat()
            out |= _gguf_tokenizer(str(path), stat.st_mtime_ns, stat.st_size)
        except Exception:  # an unreadable header: show says what it can from the loaded model
            pass
    slot = manager.get(name)
    if slot is not None:
        tok = slot.served.tokenizer
        out.setdefault("tokenizer.ggml.model", type(tok).__name__)
        out.setdefault("tokenizer.ggml.token_count", tok.vocab_size)
        for key, value in (("bos_token_id", tok.bos_id), ("eos_token_id", tok.eos_id)):
            if value is not None:
                out.setdefault(f"tokenizer.ggml.{key}", value)
        out.setdefault("tokenizer.ggml.add_bos_token", bool(tok.add_bos))
    return out


@functools.lru_cache(maxsize=16)
def _gguf_tokenizer(path: str, _mtime: int, _size: int) -> dict[str, Any]:
    from llamarun.loaders.gguf.reader import read_gguf

    meta = read_gguf(path).metadata
    out: dict[str, Any] = {}
    for key in ("model", "pre", "bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id",
                "add_bos_token", "add_eos_token"):
        value = meta.get(f"tokenizer.ggml.{key}")
        if isinstance(value, (str, int, float, bool)):
            out[f"tokenizer.ggml.{key}"] = value
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is not None:
        out["tokenizer.ggml.token_count"] = len(tokens)
    return out
