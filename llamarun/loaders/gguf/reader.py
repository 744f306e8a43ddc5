"""Read a GGUF file: its metadata, its tensor directory, and zero-copy views of the tensor bytes.

This module must not import torch: `llamarun show` reads GGUF headers and should answer at once.
The header is parsed with `struct.unpack_from` over one memory map of the file; tensor bytes are
never read here, only sliced out of that map on request.

Layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata count,
the metadata key/values, the tensor infos (name, n_dims, ne[n_dims], type, offset), padding to
`general.alignment`, then the tensor data, each offset relative to the start of that data section.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from llamarun.errors import CheckpointError, ModelNotFoundError, UnsupportedError
from llamarun.loaders.gguf.ggml_types import BLOCK_GEOMETRY, type_name

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS

_STRING, _ARRAY = 8, 9
# GGUF value type id -> (struct format, numpy dtype) for the fixed-size types.
_FIXED: dict[int, tuple[str, str]] = {
    0: ("<B", "u1"), 1: ("<b", "i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"), 4: ("<I", "<u4"),
    5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "u1"), 10: ("<Q", "<u8"), 11: ("<q", "<i8"),
    12: ("<d", "<f8"),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ARRAY_HEADER = struct.Struct("<IQ")


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor's directory entry.

    `shape` is in torch (row-major) order, i.e. GGUF's `ne` reversed: a 2-D weight is
    (out_features, in_features). `offset` is absolute in the file; `nbytes` is the size of its data.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        """Number of weights in the tensor."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        """The GGML type as text ('Q4_1')."""
        return type_name(self.ggml_type)


class GGUFFile:
    """A parsed GGUF file: metadata, tensor directory (in file order) and a memory map of its bytes.

    The map is copy-on-write (like `torch.load(mmap=True)`): arrays and tensors made from it may be
    written to without touching the file, and tensors built on it need no copy.
    """

    def __init__(
        self,
        path: Path,
        version: int,
        metadata: dict[str, Any],
        tensors: dict[str, GGUFTensorInfo],
        alignment: int,
        data_offset: int,
        mm: np.ndarray,
    ) -> None:
        self.path = path
        self.version = version
        self.metadata = metadata
        self.tensors = tensors
        self.alignment = alignment
        self.data_offset = data_offset
        self._mm = mm

    @property
    def file_size(self) -> int:
        """Size of the file in bytes."""
        return int(self._mm.shape[0])

    def raw(self, name: str) -> np.ndarray:
        """The bytes of tensor `name` as a 1-D uint8 array: a view into the file's memory map, no copy."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(
                f"{self.path}: has no tensor named {name!r}",
                "the file lacks a weight this model needs; check that it is a complete checkpoint",
            )
        return self._mm[info.offset : info.offset + info.nbytes]

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, version={self.version}, {len(self.tensors)} tensors)"


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse the header of the GGUF file at `path` (tensor data stays on disk, mapped, unread)."""
    path = Path(path)
    head = _read_head(path)
    _check_magic_and_version(path, head)
    mm = np.memmap(path, dtype=np.uint8, mode="c")
    with memoryview(mm) as buf:
        parser = _HeaderParser(path, buf)
        try:
            return parser.parse(mm)
        except (struct.error, IndexError, ValueError):
            # Any read past the end of the buffer lands here: the header itself is cut short.
            raise CheckpointError(
                f"{path}: GGUF header is truncated or corrupt (it runs past the end of the "
                f"{len(mm)}-byte file, near byte {parser.off})",
                "re-download or re-convert the file",
            ) from None


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(24)
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path}: no such file", "check the path or run `llamarun list`") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a GGUF file", "pass the .gguf file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror})", "check its permissions") from None


def _check_magic_and_version(path: Path, head: bytes) -> None:
    if head[:4] != GGUF_MAGIC:
        found = "an empty file" if not head else f"magic {head[:4]!r}"
        raise CheckpointError(
            f"{path}: not a GGUF file (found {found}, expected {GGUF_MAGIC!r})",
            "pass a .gguf model file; use the HF, MLX or Meta loaders for other formats",
        )
    if len(head) < 24:
        raise CheckpointError(f"{path}: GGUF header is truncated ({len(head)} bytes)", "re-download it")
    version = _U32.unpack_from(head, 4)[0]
    if version in SUPPORTED_VERSIONS:
        return
    if int.from_bytes(head[4:8], "big") in SUPPORTED_VERSIONS:
        raise UnsupportedError(
            f"{path}: is a big-endian GGUF file, which llamarun does not read",
            "convert it again on a little-endian machine",
        )
    raise UnsupportedError(
        f"{path}: GGUF version {version} is not supported (versions {SUPPORTED_VERSIONS[0]} and "
        f"{SUPPORTED_VERSIONS[1]} are)",
        "convert the model again with a current llama.cpp",
    )


class _HeaderParser:
    """Walks the header bytes once, keeping a running offset."""

    def __init__(self, path: Path, buf: memoryview) -> None:
        self.path = path
        self.buf = buf
        self.size = len(buf)
        self.off = 0

    def fail(self, what: str, hint: str = "the file is corrupt; re-download or re-convert it") -> NoReturn:
        raise CheckpointError(f"{self.path}: {what}", hint)

    def parse(self, mm: np.ndarray) -> GGUFFile:
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", self.buf, 4)
        self.off = 24
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string()
            if key in metadata:
                self.fail(f"metadata key {key!r} appears twice")
            metadata[key] = self.value(self.u32())
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            self.fail(f"general.alignment is {alignment!r}, not a power of two")
        entries = [self.tensor_entry() for _ in range(n_tensors)]
        data_offset = -(-self.off // alignment) * alignment
        tensors: dict[str, GGUFTensorInfo] = {}
        for name, shape, ggml_type, rel_offset, nbytes in entries:
            if name in tensors:
                self.fail(f"tensor name {name!r} appears twice")
            tensors[name] = GGUFTensorInfo(name, shape, ggml_type, data_offset + rel_offset, nbytes)
        expected = max((t.offset + t.nbytes for t in tensors.values()), default=0)
        if expected > self.size:
            self.fail(f"file is truncated: expected {expected} bytes, found {self.size}", "re-download it")
        return GGUFFile(self.path, version, metadata, tensors, alignment, data_offset, mm)

    def u32(self) -> int:
        v = _U32.unpack_from(self.buf, self.off)[0]
        self.off += 4
        return v

    def u64(self) -> int:
        v = _U64.unpack_from(self.buf, self.off)[0]
        self.off += 8
        return v

    def string(self) -> str:
        n = self.u64()
        end = self.off + n
        if end > self.size:
            raise IndexError(f"a string of {n} bytes at offset {self.off} runs past the end")
        # surrogateescape keeps invalid UTF-8 (rare raw-byte tokens) recoverable with .encode(..., same)
        s = str(self.buf[self.off : end], "utf-8", "surrogateescape")
        self.off = end
        return s

    def value(self, vtype: int) -> Any:
        fixed = _FIXED.get(vtype)
        if fixed is not None:
            v = struct.unpack_from(fixed[0], self.buf, self.off)[0]
            self.off += struct.calcsize(fixed[0])
            return v
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array()
        self.fail(f"unknown metadata value type {vtype} at byte {self.off - 4}")

    def array(self) -> Any:
        etype, count = _ARRAY_HEADER.unpack_from(self.buf, self.off)
        self.off += 12
        fixed = _FIXED.get(etype)
        min_item = np.dtype(fixed[1]).itemsize if fixed else (8 if etype == _STRING else 12)
        if count * min_item > self.size - self.off:  # refuse absurd counts before allocating
            raise IndexError(f"an array of {count} items at offset {self.off} runs past the end")
        if fixed is not None:
            arr = np.frombuffer(self.buf, dtype=fixed[1], count=count, offset=self.off).copy()
            self.off += arr.nbytes
            return arr != 0 if etype == 7 else arr.astype(arr.dtype.newbyteorder("="), copy=False)
        if etype == _STRING:
            return self.string_array(count)
        if etype == _ARRAY:  # rare: plain nested lists all the way down
            return [_as_list(self.array()) for _ in range(count)]
        self.fail(f"unknown metadata array element type {etype} at byte {self.off - 12}")

    def string_array(self, count: int) -> list[str]:
        # The hot loop of the header (a 128k vocabulary plus 280k merges): keep it tight.
        buf, off, unpack = self.buf, self.off, _U64.unpack_from
        out: list[str] = [""] * count
        for i in range(count):
            n = unpack(buf, off)[0]
            off += 8
            out[i] = str(buf[off : off + n], "utf-8", "surrogateescape")
            off += n
        if off > self.size:  # a cut string was silently shortened by the slice; the end tells
            raise IndexError(f"a string array runs past the end of the file ({off} > {self.size})")
        self.off = off
        return out

    def tensor_entry(self) -> tuple[str, tuple[int, ...], int, int, int]:
        name = self.string()
        n_dims = self.u32()
        if n_dims > MAX_DIMS:
            self.fail(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS} are allowed)")
        ne = struct.unpack_from(f"<{n_dims}Q", self.buf, self.off)
        self.off += 8 * n_dims
        ggml_type = self.u32()
        rel_offset = self.u64()
        geometry = BLOCK_GEOMETRY.get(ggml_type)  # IntEnum keys hash like their ints
        if geometry is None:
            raise UnsupportedError(
                f"{self.path}: tensor {name!r} has unknown GGML type id {ggml_type}",
                "the file may come from a newer llama.cpp; convert it to a known type (Q4_K, Q8_0, F16)",
            )
        block, type_size = geometry
        n_elements = 1
        for d in ne:
            n_elements *= d
        if ne and ne[0] % block:
            self.fail(f"tensor {name!r} ({type_name(ggml_type)}) has rows of {ne[0]} weights, "
                      f"not a multiple of its block size {block}")
        return name, tuple(reversed(ne)), ggml_type, rel_offset, n_elements // block * type_size


def _as_list(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value
