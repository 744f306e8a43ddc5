"""The Llama Guard 3 names the store knows."""

from __future__ import annotations

from llamarun.store.catalog import HFSource, canonical_ref, lookup, smaller_variants


def test_guard_names_resolve_to_meta_repos_and_gguf_files():
    assert lookup("llama-guard3:8b").source == HFSource("meta-llama/Llama-Guard-3-8B")
    assert lookup("llama-guard3:1b").source == HFSource("meta-llama/Llama-Guard-3-1B")
    assert canonical_ref("llama-guard3") == "llama-guard3:8b"
    gguf = lookup("llama-guard3:1b-q4_k_m")
    assert gguf.format == "gguf" and gguf.source.filename == "Llama-Guard-3-1B-Q4_K_M.gguf"
    assert lookup("llama-guard3:8b-q4_K_M").source.repo_id == "bartowski/Llama-Guard-3-8B-GGUF"


def test_a_guard_too_big_for_memory_suggests_a_smaller_guard():
    refs = [e.ref for e in smaller_variants("llama-guard3:8b", 5 * 1000**3)]
    assert refs == ["llama-guard3:8b-q4_K_M", "llama-guard3:1b", "llama-guard3:1b-q4_K_M"]
