"""GGUF header reader: against files written by the `gguf` package, hand-made broken files, the real model."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from llamarun.errors import CheckpointError, ModelNotFoundError, UnsupportedError
from llamarun.loaders.gguf.ggml_types import BLOCK_GEOMETRY, GGMLType, tensor_nbytes
from llamarun.loaders.gguf.reader import read_gguf

SCALARS = [  # key, value, GGUF type, expected Python type
    ("t.u8", 200, V.UINT8, int), ("t.i8", -100, V.INT8, int), ("t.u16", 60000, V.UINT16, int),
    ("t.i16", -30000, V.INT16, int), ("t.u32", 4_000_000_000, V.UINT32, int),
    ("t.i32", -2_000_000_000, V.INT32, int), ("t.u64", 2**63 + 5, V.UINT64, int),
    ("t.i64", -(2**62), V.INT64, int), ("t.f32", 0.25, V.FLOAT32, float), ("t.f64", 1e-300, V.FLOAT64, float),
    ("t.bool", True, V.BOOL, bool), ("t.str", "héllo wörld ✓", V.STRING, str),
]


def _write_sample(path: Path, alignment: int | None = None) -> dict[str, np.ndarray]:
    """A small GGUF with every metadata value type and tensors of several types and ranks."""
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, value, vtype, _ in SCALARS:
        w.add_key_value(key, value, vtype)
    w.add_array("t.strings", ["a", "", "ĠHello", "中文", "x" * 300])
    w.add_key_value("t.ints", [3, -1, 7], V.ARRAY, sub_type=V.INT32)
    w.add_key_value("t.floats", [0.5, -2.0], V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("t.u64s", [1, 2**40], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("t.bools", [True, False, True], V.ARRAY, sub_type=V.BOOL)
    w.add_key_value("t.nested", [[1, 2], [3]], V.ARRAY)
    rng = np.random.default_rng(0)
    tensors = {
        "norm.weight": rng.standard_normal(64).astype(np.float32),
        "proj.weight": rng.standard_normal((3, 64)).astype(np.float16),
        "cube.weight": rng.standard_normal((2, 3, 32)).astype(np.float32),
    }
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    for name, qtype in [("q8.weight", Q.Q8_0), ("q41.weight", Q.Q4_1)]:
        packed = gguf.quants.quantize(rng.standard_normal((5, 64)).astype(np.float32), qtype)
        w.add_tensor(name, packed, raw_dtype=qtype)
        tensors[name] = packed
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


@pytest.fixture()
def sample(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "sample.gguf"
    return path, _write_sample(path)


def test_metadata_values_and_types(sample):
    path, _ = sample
    md = read_gguf(path).metadata
    for key, value, _, pytype in SCALARS:
        assert type(md[key]) is pytype, key
        assert md[key] == value, key
    assert md["general.architecture"] == "llama"
    assert md["t.strings"] == ["a", "", "ĠHello", "中文", "x" * 300]
    arrays = [("t.ints", [3, -1, 7], np.int32), ("t.floats", [0.5, -2.0], np.float32),
              ("t.u64s", [1, 2**40], np.uint64), ("t.bools", [True, False, True], np.bool_)]
    for key, expected, dtype in arrays:
        assert isinstance(md[key], np.ndarray) and md[key].dtype == dtype, key
        assert md[key].tolist() == expected, key
    assert md["t.nested"] == [[1, 2], [3]] and type(md["t.nested"][0][0]) is int


def test_tensor_directory_shapes_types_offsets_bytes(sample):
    path, written = sample
    f = read_gguf(path)
    assert f.version == 3 and f.alignment == 32 and f.data_offset % 32 == 0
    assert list(f.tensors) == list(written)  # file order
    expect_shape = {"norm.weight": (64,), "proj.weight": (3, 64), "cube.weight": (2, 3, 32),
                    "q8.weight": (5, 64), "q41.weight": (5, 64)}
    expect_type = {"norm.weight": GGMLType.F32, "proj.weight": GGMLType.F16, "cube.weight": GGMLType.F32,
                   "q8.weight": GGMLType.Q8_0, "q41.weight": GGMLType.Q4_1}
    data = path.read_bytes()
    for name, arr in written.items():
        info = f.tensors[name]
        assert info.shape == expect_shape[name] and info.ggml_type == expect_type[name], name
        assert info.nbytes == arr.nbytes == tensor_nbytes(info.ggml_type, info.n_elements, info.shape[-1])
        assert info.offset >= f.data_offset and info.offset % 32 == 0
        raw = f.raw(name)
        assert raw.dtype == np.uint8 and raw.shape == (arr.nbytes,)
        assert raw.tobytes() == arr.tobytes() == data[info.offset : info.offset + info.nbytes]
        assert np.shares_memory(raw, f.raw(name))  # a view into one map, not a fresh read


def test_custom_alignment(tmp_path: Path):
    path = tmp_path / "aligned.gguf"
    written = _write_sample(path, alignment=256)
    f = read_gguf(path)
    assert f.alignment == 256 and f.data_offset % 256 == 0
    for name, arr in written.items():
        assert f.tensors[name].offset % 256 == 0
        assert f.raw(name).tobytes() == arr.tobytes()


def test_block_geometry_matches_gguf_package():
    for qtype, geometry in gguf.GGML_QUANT_SIZES.items():
        if qtype == Q.Q8_1:  # the gguf package still lists the old 40-byte (two f32) block
            assert BLOCK_GEOMETRY[GGMLType.Q8_1] == (32, 36)
            continue
        assert BLOCK_GEOMETRY[GGMLType[qtype.name]] == geometry and GGMLType[qtype.name] == qtype


def test_unknown_tensor_name_is_clear(sample):
    path, _ = sample
    with pytest.raises(CheckpointError, match="no tensor named 'missing'"):
        read_gguf(path).raw("missing")


# ---- broken files -------------------------------------------------------------------------------------

def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def _handmade(kvs: bytes = b"", n_kv: int = 0, infos: bytes = b"", n_tensors: int = 0, data: bytes = b"",
              version: int = 3) -> bytes:
    """A GGUF built byte by byte, so we can break it in ways the gguf writer refuses to."""
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + kvs + infos
    return head + b"\0" * (-len(head) % 32) + data


def _info(name: str, ne: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return _s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, ggml_type, offset)


def _expect(tmp_path: Path, content: bytes, exc: type, *fragments: str) -> str:
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(exc) as info:
        read_gguf(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    for frag in fragments:
        assert frag in text
    return text


def test_handmade_file_reads(tmp_path: Path):
    kv = _s("general.architecture") + struct.pack("<I", 8) + _s("llama")
    infos = _info("w", (32, 2), 0, 0)
    path = tmp_path / "ok.gguf"
    path.write_bytes(_handmade(kv, 1, infos, 1, np.arange(64, dtype=np.float32).tobytes()))
    f = read_gguf(path)
    assert f.metadata == {"general.architecture": "llama"} and f.tensors["w"].shape == (2, 32)
    assert f.raw("w").view(np.float32).tolist() == list(range(64))


def test_bad_magic(tmp_path: Path):
    _expect(tmp_path, b"GGML" + b"\0" * 40, CheckpointError, "not a GGUF file", "b'GGML'")
    _expect(tmp_path, b"", CheckpointError, "not a GGUF file", "empty")


def test_unsupported_versions(tmp_path: Path):
    _expect(tmp_path, _handmade(version=1), UnsupportedError, "GGUF version 1 is not supported")
    _expect(tmp_path, _handmade(version=7), UnsupportedError, "version 7")
    big_endian = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    _expect(tmp_path, big_endian, UnsupportedError, "big-endian")


def test_truncated_tensor_data(sample, tmp_path: Path):
    path, _ = sample
    full = path.read_bytes()
    expected = max(t.offset + t.nbytes for t in read_gguf(path).tensors.values())
    cut = full[: expected - 100]
    _expect(tmp_path, cut, CheckpointError,
            f"file is truncated: expected {expected} bytes, found {len(cut)}", "re-download")


def test_truncated_header(sample, tmp_path: Path):
    path, _ = sample
    full = path.read_bytes()
    for size in (10, 30, 200, read_gguf(path).data_offset - 40):
        _expect(tmp_path, full[:size], CheckpointError, "truncated")


def test_truncated_string_array(tmp_path: Path):
    arr = _s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + _s("ab") + _s("cd") + _s("efgh")
    whole = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + arr  # no padding: the array ends the file
    _expect(tmp_path, whole[:-2], CheckpointError, "truncated")
    # an absurd count must fail fast, not try to allocate it
    _expect(tmp_path, _handmade(_s("k") + struct.pack("<IIQ", 9, 8, 2**60), 1), CheckpointError, "truncated")


def test_unknown_value_type(tmp_path: Path):
    _expect(tmp_path, _handmade(_s("k") + struct.pack("<II", 13, 0), 1), CheckpointError,
            "unknown metadata value type 13")
    _expect(tmp_path, _handmade(_s("k") + struct.pack("<IIQ", 9, 13, 1) + b"\0" * 16, 1), CheckpointError,
            "unknown metadata array element type 13")


def test_duplicates(tmp_path: Path):
    infos = _info("w", (32,), 0, 0) + _info("w", (32,), 0, 128)
    _expect(tmp_path, _handmade(infos=infos, n_tensors=2, data=b"\0" * 256), CheckpointError,
            "tensor name 'w' appears twice")
    kv = (_s("a") + struct.pack("<II", 4, 1)) * 2
    _expect(tmp_path, _handmade(kv, 2), CheckpointError, "metadata key 'a' appears twice")


def test_bad_tensor_entries(tmp_path: Path):
    _expect(tmp_path, _handmade(infos=_info("w", (32,), 99, 0), n_tensors=1, data=b"\0" * 128),
            UnsupportedError, "unknown GGML type id 99")
    _expect(tmp_path, _handmade(infos=_info("w", (33,), int(Q.Q8_0), 0), n_tensors=1, data=b"\0" * 64),
            CheckpointError, "not a multiple of its block size 32")
    _expect(tmp_path, _handmade(infos=_info("w", (1,) * 5, 0, 0), n_tensors=1, data=b"\0" * 32),
            CheckpointError, "5 dimensions")
    kv = _s("general.alignment") + struct.pack("<II", 4, 24)
    _expect(tmp_path, _handmade(kv, 1), CheckpointError, "not a power of two")


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(ModelNotFoundError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_gguf(tmp_path)


def test_large_vocabulary_header_is_fast(tmp_path: Path):
    # A Llama-3-sized vocabulary (128k tokens, 280k merges) written directly: the writer is slow.
    rng = np.random.default_rng(1)
    words = ["".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(1, 9))) for _ in range(4096)]
    tokens = [f"{words[i % 4096]}{i}" for i in range(128_256)]
    merges = [f"{words[i % 4096]} {words[(i * 7) % 4096]}" for i in range(280_000)]

    def str_array(key: str, items: list[str]) -> bytes:
        return _s(key) + struct.pack("<IIQ", 9, 8, len(items)) + b"".join(_s(x) for x in items)

    types = _s("tokenizer.ggml.token_type") + struct.pack("<IIQ", 9, 5, len(tokens))
    kvs = str_array("tokenizer.ggml.tokens", tokens) + str_array("tokenizer.ggml.merges", merges)
    kvs += types + np.ones(len(tokens), np.int32).tobytes()
    path = tmp_path / "vocab.gguf"
    path.write_bytes(_handmade(kvs, 3))
    start = time.perf_counter()
    md = read_gguf(path).metadata
    elapsed = time.perf_counter() - start
    assert md["tokenizer.ggml.tokens"] == tokens and md["tokenizer.ggml.merges"] == merges
    assert md["tokenizer.ggml.token_type"].shape == (128_256,)
    assert elapsed < 1.0, f"header took {elapsed:.2f}s (about 0.15 s expected; 1 s allows a busy CI box)"


# ---- the real default model ------------------------------------------------------------------------------

def test_default_model_header(default_gguf: Path):
    f = read_gguf(default_gguf)
    md = f.metadata
    assert md["general.architecture"] == "llama"
    tokens = md["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and len(tokens) == 49152 and all(isinstance(t, str) for t in tokens[:100])
    assert len(md["tokenizer.ggml.token_type"]) == 49152
    assert md["llama.block_count"] == 30 and md["llama.embedding_length"] == 576
    assert f.tensors["token_embd.weight"].shape == (49152, 576)
    assert f.tensors["blk.0.ffn_down.weight"].shape == (576, 1536)
    assert f.tensors["blk.0.ffn_down.weight"].ggml_type == GGMLType.Q4_1
    # every tensor sits inside the file and after the header
    ends = [t.offset + t.nbytes for t in f.tensors.values()]
    assert min(t.offset for t in f.tensors.values()) >= f.data_offset and max(ends) <= f.file_size


def test_default_model_agrees_with_gguf_reader(default_gguf: Path, default_gguf_reader):
    ours = read_gguf(default_gguf)
    ref = default_gguf_reader  # gguf.GGUFReader over the same file (tests/conftest.py)
    assert [t.name for t in ref.tensors] == list(ours.tensors)
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert info.shape == tuple(int(x) for x in reversed(t.shape))
        assert (info.offset, info.nbytes, info.ggml_type) == (t.data_offset, t.n_bytes, int(t.tensor_type))
    assert ref.fields["tokenizer.ggml.merges"].contents() == ours.metadata["tokenizer.ggml.merges"]


def test_reader_does_not_import_torch(default_gguf: Path):
    code = (
        "import sys; from llamarun.loaders.gguf.reader import read_gguf; "
        f"f = read_gguf({str(default_gguf)!r}); assert f.metadata['general.architecture'] == 'llama'; "
        "import llamarun.loaders.gguf; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
