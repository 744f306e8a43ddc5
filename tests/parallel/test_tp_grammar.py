"""Grammars under tensor parallelism: every rank masks with the same grammar, so the answer is one process's."""

from __future__ import annotations

import json
import re

import pytest
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf
from tiny_grammar_model import LOGITS, STOP, run_all, text, tiny_engine

from llamarun.engine.llm_engine import EngineConfig
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.parallel.launch import ShardSpec, start_tensor_parallel
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams
from llamarun.structured.vocab import GrammarVocab

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REGEX = r"[a-c]{2,5}@(x|yz)\.[0-9]+"


def requests() -> list[tuple[list[int], SamplingParams]]:
    return [([10, 20, 30], SamplingParams.greedy(max_tokens=64, grammar=GrammarSpec("regex", REGEX))),
            ([65, 66, 67], SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=7, max_tokens=64,
                                          grammar=GrammarSpec("choice", ["red", "green", "blue"])))]


def test_grammar_requests_over_two_ranks_equal_one_process(tmp_path):
    spec = TinySpec(vocab_size=LOGITS)  # logits wider than the 260-token tokenizer: padding is never allowed
    path = add_byte_tokenizer(write_hf(spec, make_weights(spec, seed=5)[0], tmp_path / "hf"))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": STOP}))  # byte 0 ends a grammar
    ckpt = open_checkpoint(str(path), "hf")
    vocab = GrammarVocab.from_tokenizer(ckpt.tokenizer(), [STOP], LOGITS)
    want = run_all(tiny_engine(build_model(ckpt), vocab), requests())
    engine_config = EngineConfig(context_length=512, kv_tokens=4096, block_size=16)
    handle = start_tensor_parallel(ShardSpec(str(path), "hf", engine_config, timeout_s=30), 2)
    try:
        got = run_all(handle.engine, requests())
    finally:
        handle.close()
    assert got == want
    assert re.fullmatch(REGEX, text(got["r0"], vocab))  # the stop token itself is not in the output
    assert text(got["r1"], vocab) in ("red", "green", "blue")
