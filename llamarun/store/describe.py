"""What `llamarun show` and `llamarun list` say about a model, read from metadata alone (no torch).

Every format answers the same questions: architecture, parameter count (from ModelConfig, so all
formats of one model agree), quantization, context and embedding length, chat template, license.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamarun.config import ModelConfig
from llamarun.errors import LlamarunError
from llamarun.loaders.checkpoint import read_json
from llamarun.loaders.detect import declared_mlx_quantization, detect_format, meta_folder

# llama.cpp's `general.file_type` (enum llama_ftype): the quantization recipe of the whole file.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
    32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}
_LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE")


@dataclass(frozen=True)
class ModelInfo:
    """The facts `show` prints. Fields are None where the checkpoint does not say."""

    format: str
    architecture: str
    parameters: int | None
    quantization: str
    context_length: int | None
    embedding_length: int | None
    chat_template: str | None
    license: str | None
    config: ModelConfig | None = None


def describe_model(path: str | Path, fmt: str | None = None) -> ModelInfo:
    """Read what is known about the model at `path` (format detected unless given)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "gguf":
        return _describe_gguf(path)
    if fmt == "meta":
        return _describe_meta(path)
    return _describe_hf(path, fmt)


def format_parameters(n: int | None) -> str:
    """`134515008` -> `134.5M`, `70553706496` -> `70.6B` (like `ollama show`)."""
    if n is None:
        return "unknown"
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _describe_gguf(path: Path) -> ModelInfo:
    from llamarun.loaders.gguf.reader import read_gguf

    f = read_gguf(path)
    meta, tensors = f.metadata, f.tensors
    arch = str(meta.get("general.architecture", "unknown"))
    tokens = meta.get("tokenizer.ggml.tokens")
    embd = tensors.get("token_embd.weight")
    vocab = meta.get(f"{arch}.vocab_size") or (len(tokens) if tokens is not None else None) \
        or (embd.shape[0] if embd is not None else 0)
    tied = "output.weight" not in tensors
    config = _try(lambda: ModelConfig.from_gguf(meta, vocab_size=int(vocab), tied=tied,
                                               rope_freq_factors=None))
    params = config.num_parameters if config else sum(t.n_elements for t in tensors.values())
    file_type = meta.get("general.file_type")
    if file_type in _FILE_TYPES:
        quant = _FILE_TYPES[file_type]
    else:  # no recipe recorded: name the type most 2-D weights use
        kinds = Counter(t.type_name for t in tensors.values() if len(t.shape) >= 2)
        quant = kinds.most_common(1)[0][0] if kinds else "unknown"
    lic = meta.get("general.license") or meta.get("general.license.name")
    return ModelInfo(
        format="gguf", architecture=arch, parameters=params, quantization=quant,
        context_length=_int(meta.get(f"{arch}.context_length")),
        embedding_length=_int(meta.get(f"{arch}.embedding_length")),
        chat_template=meta.get("tokenizer.chat_template"), license=str(lic) if lic else None, config=config,
    )


def _describe_hf(folder: Path, fmt: str) -> ModelInfo:
    from llamarun.loaders.hf_folder import chat_template

    cfg = read_json(folder / "config.json")
    archs = cfg.get("architectures") or []
    arch = str(cfg.get("model_type") or (archs[0] if archs else "unknown"))
    config = _try(lambda: ModelConfig.from_hf(cfg))
    mlx = declared_mlx_quantization(cfg) if fmt == "mlx" else None
    if mlx is not None:
        quant = f"MLX {mlx['bits']}-bit, group {mlx.get('group_size', 64)}"
    elif isinstance(cfg.get("quantization_config"), dict):
        q = cfg["quantization_config"]
        quant = str(q.get("quant_method") or q.get("format") or "quantized")
    else:
        quant = str(cfg.get("torch_dtype") or cfg.get("dtype") or "unknown").replace("bfloat16", "BF16") \
            .replace("float16", "F16").replace("float32", "F32")
    return ModelInfo(
        format=fmt, architecture=arch, parameters=config.num_parameters if config else None,
        quantization=quant, context_length=_int(cfg.get("max_position_embeddings")),
        embedding_length=_int(cfg.get("hidden_size")),
        chat_template=_try(lambda: chat_template(folder)), license=_license_file(folder), config=config,
    )


def _describe_meta(path: Path) -> ModelInfo:
    folder = meta_folder(path) or path
    params = read_json(folder / "params.json")
    shards = sorted(folder.glob("consolidated.*.pth"))
    shapes = _try(lambda: pth_shapes(shards[0])) or {}
    w1 = shapes.get("layers.0.feed_forward.w1.weight")
    # w1 is split by rows across model-parallel shards; without it, fall back to Meta's sizing rule.
    width = w1[0][0] * len(shards) if w1 else _try(lambda: _meta_ffn_width(params))
    config = _try(lambda: ModelConfig.from_meta_params(params, int(width)))
    dtypes = Counter(dtype for _shape, dtype in shapes.values())
    return ModelInfo(
        format="meta", architecture="llama", parameters=config.num_parameters if config else None,
        quantization=dtypes.most_common(1)[0][0] if dtypes else "unknown",
        context_length=config.max_position_embeddings if config else None,
        embedding_length=_int(params.get("dim")),
        chat_template=None,  # Meta checkpoints carry no template: the Llama 3 format is built in
        license=_license_file(folder) or _license_file(path), config=config,
    )


def _meta_ffn_width(params: dict[str, Any]) -> int:
    """Meta's FFN width rule: 2/3 of 4*dim, times ffn_dim_multiplier, rounded up to multiple_of."""
    dim = int(params["dim"])
    width = int(2 * (4 * dim) / 3)
    if params.get("ffn_dim_multiplier"):
        width = int(float(params["ffn_dim_multiplier"]) * width)
    multiple = int(params.get("multiple_of", 256))
    return multiple * ((width + multiple - 1) // multiple)


def pth_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, dtype) of a `torch.save` zip file, read from its pickle without torch.

    Only the few globals torch writes are allowed (rebuild functions, storage types, OrderedDict),
    each replaced by a stub, so nothing from the file runs and no tensor data is read.
    """
    with zipfile.ZipFile(path) as zf:
        member = next(n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
        data = zf.read(member)
    result = _ShapeUnpickler(io.BytesIO(data)).load()
    return {k: v for k, v in result.items() if isinstance(v, tuple)} if isinstance(result, dict) else {}


class _ShapeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            # (storage, offset, size, stride, ...) -> (shape, dtype name); storage is the dtype name here
            return lambda storage, _offset, size, *_rest: (tuple(int(d) for d in size), storage)
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda tensor, *_rest: tensor
        if module == "torch" and name.endswith("Storage"):
            return _STORAGE_DTYPES.get(name, name.removesuffix("Storage").upper())
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a checkpoint")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', <dtype name from find_class>, key, location, numel): keep the dtype name only.
        return pid[1] if isinstance(pid, tuple) and len(pid) > 1 else "unknown"


_STORAGE_DTYPES = {"BFloat16Storage": "BF16", "HalfStorage": "F16", "FloatStorage": "F32",
                   "DoubleStorage": "F64", "ByteStorage": "U8", "CharStorage": "I8", "IntStorage": "I32",
                   "LongStorage": "I64", "BoolStorage": "BOOL"}


def _license_file(folder: Path) -> str | None:
    for name in _LICENSE_FILES:
        p = folder / name
        if p.is_file():
            return p.read_text(encoding="utf-8", errors="replace").strip() or None
    return None


def _try(fn: Any) -> Any:
    # `show` describes what it can: a config llamarun cannot run still has a name and a template.
    try:
        return fn()
    except (LlamarunError, KeyError, TypeError, ValueError, OSError, StopIteration, IndexError,
            pickle.UnpicklingError, zipfile.BadZipFile, EOFError):
        return None


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None
