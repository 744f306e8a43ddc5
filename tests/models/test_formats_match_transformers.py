"""Tiny random Llamas written in all four formats: our logits equal Transformers' and each other's."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import (
    TinySpec,
    make_weights,
    write_gguf,
    write_hf,
    write_hf_sharded,
    write_meta,
    write_mlx,
)

from llamarun.cache.contiguous import ContiguousKVCache
from llamarun.engine.forward import forward_tokens
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model

SPECS = {
    "gqa-untied": TinySpec(),
    "gqa-tied": TinySpec(tie_word_embeddings=True, rope_theta=10000.0),
    "gqa-llama3-rope": TinySpec(llama3_rope=True),
}
PROMPT = [1, 17, 42, 99, 3, 250, 7, 7, 7, 128, 64, 5, 200, 31, 2, 11] * 3  # 48 tokens


def _ours(path, fmt) -> torch.Tensor:
    model = build_model(open_checkpoint(path, fmt))
    cache = ContiguousKVCache(model.config, 256, torch.float32, "cpu")
    return forward_tokens(model, cache, PROMPT, all_logits=True)  # [tokens, vocab]


@pytest.fixture(scope="module", params=list(SPECS))
def written(request, tmp_path_factory):
    spec = SPECS[request.param]
    weights, packed = make_weights(spec, seed=hash(request.param) % 1000)
    root = tmp_path_factory.mktemp(request.param)
    paths = {
        "hf": write_hf(spec, weights, root / "hf"),
        "hf-sharded": write_hf_sharded(spec, weights, root / "hf-sharded"),
        "gguf": write_gguf(spec, weights, root / "model.gguf"),
        "mlx": write_mlx(spec, weights, packed, root / "mlx"),
        "meta": write_meta(spec, weights, root / "meta"),
    }
    return spec, paths


def _reference(hf_path) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    ref = LlamaForCausalLM.from_pretrained(hf_path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return ref(torch.tensor([PROMPT])).logits[0]  # [tokens, vocab]


@pytest.mark.parametrize("fmt", ["hf", "hf-sharded", "gguf", "mlx", "meta"])
def test_logits_match_transformers(written, fmt):
    _, paths = written
    expected = _reference(paths["hf"])
    got = _ours(paths[fmt], fmt.split("-")[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_all_formats_agree(written):
    _, paths = written
    logits = {fmt: _ours(path, fmt.split("-")[0]) for fmt, path in paths.items()}
    base = logits.pop("hf")
    for fmt, got in logits.items():
        torch.testing.assert_close(got, base, rtol=1e-5, atol=1e-5, msg=f"{fmt} differs from hf")


def test_incremental_decode_matches_full_forward(written):
    """Prefill in chunks + one token at a time gives the same logits as one pass over everything."""
    _, paths = written
    model = build_model(open_checkpoint(paths["hf"], "hf"))
    full = forward_tokens(model, ContiguousKVCache(model.config, 256, torch.float32, "cpu"), PROMPT,
                          all_logits=True)
    cache = ContiguousKVCache(model.config, 256, torch.float32, "cpu")
    chunked = forward_tokens(model, cache, PROMPT[:20], all_logits=True, chunk_size=7)
    steps = [forward_tokens(model, cache, [t]) for t in PROMPT[20:]]
    torch.testing.assert_close(chunked, full[:20], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.stack(steps), full[20:], rtol=1e-5, atol=1e-5)
