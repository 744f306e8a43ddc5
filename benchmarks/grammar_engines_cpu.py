"""xgrammar vs llguidance on this CPU: nested-schema compile time and per-step mask time at batch 1 and 32.

Both engines get the same thing: the Llama 3 vocabulary (128,256 ids, from the `tokenizer.model` that Meta's
`llama-models` ships) as raw token bytes, and a nested JSON schema. Each of B requests walks through the tokens
of a valid instance (offset per request, so the batch holds different grammar states); a step fills all B
rows of one packed int32 bitmask with the engine's batched call, then each matcher accepts its next token.

    python benchmarks/grammar_engines_cpu.py [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]+$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {"type": "object", "properties": {
            "street": {"type": "string"}, "city": {"type": "string"},
            "geo": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                    "required": ["lat", "lon"]}},
            "required": ["street", "city", "geo"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
        "friends": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "since": {"type": "integer"}}, "required": ["name", "since"]}},
    },
    "required": ["name", "age", "score", "role", "address", "tags", "friends"],
}
INSTANCE = {"name": "Ada", "age": 36, "score": 0.75, "role": "admin",
            "address": {"street": "12 Analytical Row", "city": "London", "geo": {"lat": 51.5, "lon": -0.12}},
            "tags": ["math", "engines", "poetry"],
            "friends": [{"name": "Charles Babbage", "since": 1833}, {"name": "Mary Somerville", "since": 1834}]}


def llama3_vocab() -> tuple[list[bytes], set[int], list[int], object]:
    from llama_models.llama3 import tokenizer as meta

    from llamarun.text.tiktoken_tokenizer import TiktokenTokenizer

    tok = TiktokenTokenizer.from_file(Path(meta.__file__).parent / "tokenizer.model")
    vocab = [tok.token_bytes(i) for i in range(tok.vocab_size)]
    stops = [tok.token_to_id(t) for t in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")]
    return vocab, set(tok.special_ids), stops, tok


def bench_xgrammar(vocab, special, stops, walk, batch, steps):
    import xgrammar as xgr

    t0 = time.perf_counter()
    encoded = [b"" if i in special else v for i, v in enumerate(vocab)]
    info = xgr.TokenizerInfo(encoded, xgr.VocabType.RAW, vocab_size=len(vocab), stop_token_ids=stops)
    compiler = xgr.GrammarCompiler(info, max_threads=2)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA))
    compile_s = time.perf_counter() - t0
    matchers = [xgr.GrammarMatcher(compiled) for _ in range(batch)]
    pos = [(i * 7) % len(walk) for i in range(batch)]
    for m, p in zip(matchers, pos, strict=False):
        for t in walk[:p]:
            assert m.accept_token(t)
    mask = np.zeros((batch, (len(vocab) + 31) // 32), dtype=np.int32)
    import torch
    mask_t = torch.from_numpy(mask)
    batcher = xgr.BatchGrammarMatcher(max_threads=2)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        if batch == 1:
            matchers[0].fill_next_token_bitmask(mask_t, 0)
        else:
            batcher.batch_fill_next_token_bitmask(matchers, mask_t)
        times.append(time.perf_counter() - t0)
        for i, m in enumerate(matchers):
            if pos[i] == len(walk):
                m.reset()
                pos[i] = 0
            assert m.accept_token(walk[pos[i]])
            pos[i] += 1
    return setup, compile_s, times


def bench_llguidance(vocab, special, stops, walk, batch, steps, tok):
    import llguidance as llg
    from llguidance.numpy import fill_next_token_bitmask, fill_next_token_bitmask_par

    class Wrapped:
        eos_token_id = stops[0]
        bos_token_id = tok.bos_id
        tokens = [b"\xff" + v if i in special else v for i, v in enumerate(vocab)]  # noqa: RUF012
        special_token_ids = sorted(special)

        def __call__(self, text):
            return tok.encode(text.decode("utf-8", "replace") if isinstance(text, bytes) else text,
                              allow_special=False)

    t0 = time.perf_counter()
    lltok = llg.LLTokenizer(llg.TokenizerWrapper(Wrapped()), n_vocab=len(vocab), eos_token=stops)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = llg.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    probe = llg.LLMatcher(lltok, grammar)
    assert not probe.is_error(), probe.get_error()
    compile_s = time.perf_counter() - t0
    matchers = [llg.LLMatcher(lltok, grammar) for _ in range(batch)]
    pos = [(i * 7) % len(walk) for i in range(batch)]
    for m, p in zip(matchers, pos, strict=False):
        assert m.consume_tokens(walk[:p]) or p == 0, m.get_error()
    mask = np.zeros((batch, (len(vocab) + 31) // 32), dtype=np.int32)
    executor = llg.LLExecutor(num_threads=2)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        if batch == 1:
            fill_next_token_bitmask(matchers[0], mask, 0)
        else:
            fill_next_token_bitmask_par(executor, [(m, i) for i, m in enumerate(matchers)], mask)
        times.append(time.perf_counter() - t0)
        for i, m in enumerate(matchers):
            if pos[i] == len(walk):
                m.reset()
                pos[i] = 0
            assert m.consume_token(walk[pos[i]]), m.get_error()
            pos[i] += 1
    return setup, compile_s, times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    vocab, special, stops, tok = llama3_vocab()
    walk = tok.encode(json.dumps(INSTANCE), allow_special=False)
    print(f"vocabulary {len(vocab)} ids, instance {len(walk)} tokens, {args.steps} steps")
    for name in ("xgrammar", "llguidance"):
        for batch in (1, 32):
            if name == "xgrammar":
                setup, comp, times = bench_xgrammar(vocab, special, stops, walk, batch, args.steps)
            else:
                setup, comp, times = bench_llguidance(vocab, special, stops, walk, batch, args.steps, tok)
            ms = sorted(t * 1e3 for t in times)
            print(f"{name:10s} batch {batch:2d}: tokenizer setup {setup:6.2f} s  schema compile {comp * 1e3:8.1f} ms  "
                  f"mask/step mean {statistics.mean(ms):7.3f} ms  p50 {ms[len(ms) // 2]:7.3f}  "
                  f"p99 {ms[int(len(ms) * 0.99)]:7.3f}  max {ms[-1]:7.3f}")


if __name__ == "__main__":
    main()
