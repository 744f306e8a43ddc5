"""New store entries made by `/api/create` (and `llamarun create`): from a model, or from uploaded blobs.

From a model in the store, the new entry hard-links its files and layers new settings over the old
(`ModelDefaults.over`). From a checkpoint path the operator allowed (`serve --models-dir`), the entry
points at the file, as Hugging Face entries point into their cache. From blobs (`files`: name ->
digest), each blob is hard-linked under its name into the entry's `model/` folder: one GGUF file, or
a safetensors folder with its config and tokenizer. Every entry is built in a staging folder and
renamed into place, so a failure at any step leaves nothing behind.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from llamarun.errors import LlamarunError, RequestError
from llamarun.loaders.detect import GGUF_MAGIC, detect_format
from llamarun.store.blobs import BlobStore
from llamarun.store.home import FileRecord, Manifest, ModelStore
from llamarun.store.model_defaults import ModelDefaults

_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
MODEL_DIR = "model"


def blob_files(blobs: BlobStore, files: dict[str, str]) -> dict[str, Path]:
    """Each file name with its uploaded blob; a bad name, a bad digest or a missing blob is a RequestError."""
    if not files:
        raise RequestError("files is empty: upload the model's files to /api/blobs and name them here",
                           param="files")
    out = {}
    for name, digest in files.items():
        if not _FILE_NAME.match(name) or ".." in name:
            raise RequestError(f"invalid file name '{name[:100]}': use a relative path of letters, digits, "
                               "'.', '_' and '-'", param="files")
        path = blobs.path(digest)
        if not path.is_file():
            raise RequestError(f"blob {digest[:80]} ({name}) has not been uploaded: POST it to "
                               f"/api/blobs/{digest[:80]} first", param="files", code="blob_not_found")
        out[name] = path
    _check_layout(out)
    return out


def _check_layout(files: dict[str, Path]) -> None:
    """What can be told before building: one file must be GGUF; several must hold config.json and safetensors."""
    if len(files) == 1:
        name, path = next(iter(files.items()))
        with open(path, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise RequestError(f"'{name}' is not a model llamarun reads: a single file must be GGUF "
                                   "(upload a safetensors model as its folder's files)", param="files")
    elif "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
        raise RequestError("the files are not a model llamarun reads: a safetensors model needs config.json and "
                           "its .safetensors files (with the tokenizer's files)", param="files")


def create_from_blobs(store: ModelStore, name: str, tag: str, files: dict[str, Path],
                      defaults: ModelDefaults) -> Manifest:
    """An entry holding `files` (hard-linked blobs); the checkpoint must be one GGUF file or a model folder."""
    with store.staging() as staged:
        records = []
        for rel, blob in files.items():
            dest = staged / MODEL_DIR / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                dest.hardlink_to(blob)
            except OSError:  # another file system: copy
                shutil.copyfile(blob, dest)
            records.append(FileRecord(f"{MODEL_DIR}/{rel}", dest.stat().st_size, blob.name.removeprefix("sha256-")))
        single = len(files) == 1 and "/" not in next(iter(files))
        rel_path = f"{MODEL_DIR}/{next(iter(files))}" if single else MODEL_DIR
        try:
            fmt = detect_format(staged / rel_path)
        except LlamarunError as err:
            raise RequestError(f"the uploaded files are not a model llamarun reads: {err.message}",
                               param="files") from None
        manifest = Manifest(name, tag, source="blobs", format=fmt, path=rel_path, files=records,
                            size=sum(r.size for r in records), defaults=defaults.to_dict() or None)
        return store.commit(staged, manifest)


def create_from_model(store: ModelStore, name: str, tag: str, base: Manifest | None, base_path: Path | None,
                      defaults: ModelDefaults) -> Manifest:
    """An entry running the same weights as `base` (a store entry) or the checkpoint at `base_path`."""
    if base is not None:
        merged = defaults.over(ModelDefaults.from_dict(base.defaults))
        return store.copy(base.name, base.tag, name, tag, defaults=merged.to_dict())
    if base_path is None:
        raise ValueError("create_from_model needs a store entry or a checkpoint path")
    path = base_path.resolve()
    fmt = detect_format(path)
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    with store.staging() as staged:
        manifest = Manifest(name, tag, source=f"file:{path}", format=fmt, path=str(path), size=size,
                            defaults=defaults.to_dict() or None)
        return store.commit(staged, manifest)
