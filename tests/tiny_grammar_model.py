"""A tiny random Llama whose logits are wider than its tokenizer, with a grammar vocabulary, for engine tests.

The tokenizer has 260 byte-level ids; the model's head has 272 rows, so ids 260..271 are padding that no
grammar may allow. Byte 0 plays the stop token (random weights know no end-of-turn token).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.structured.vocab import GrammarVocab

STOP = 0
LOGITS = 272


def tiny_model(folder: Path) -> tuple[torch.nn.Module, GrammarVocab]:
    spec = TinySpec(vocab_size=LOGITS)
    weights, _ = make_weights(spec, seed=5)
    path = write_hf(spec, weights, folder)
    add_byte_tokenizer(path)
    ckpt = open_checkpoint(path, "hf")
    tokenizer = ckpt.tokenizer()
    vocab = GrammarVocab.from_tokenizer(tokenizer, [STOP], LOGITS)
    return build_model(ckpt), vocab


def tiny_engine(model: torch.nn.Module, vocab: GrammarVocab | None, **overrides) -> LLMEngine:
    config = EngineConfig(**({"context_length": 512, "kv_tokens": 4096, "block_size": 16} | overrides))
    return LLMEngine(model, config, dtype=torch.float32, device="cpu", grammar_vocab=vocab)


def run_all(engine: LLMEngine, requests: list[tuple[list[int], object]]) -> dict[str, list[int]]:
    """Run (prompt, params) pairs together; generated tokens per request id r0, r1, ..."""
    out: dict[str, list[int]] = {}
    for i, (prompt, params) in enumerate(requests):
        out[f"r{i}"] = []
        engine.add_request(prompt, params, (STOP,), request_id=f"r{i}")
    steps = 0
    while engine.has_unfinished:
        for o in engine.step():
            out[o.request_id].extend(t.token_id for t in o.new_tokens)
        steps += 1
        assert steps < 20_000
    return out


def text(ids: list[int], vocab: GrammarVocab) -> str:
    return b"".join(vocab.tokens[i] for i in ids).decode()
