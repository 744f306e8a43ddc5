"""The grammar engine adapter: the only module that imports the grammar library (xgrammar).

xgrammar was chosen by measurement (benchmarks/results/grammar-engine-cpu-2026-11-29.md): its per-step
mask is 2.6-10x cheaper than llguidance's on a 128k vocabulary. Swapping engines means rewriting this file
only: `compile_grammar`, `GrammarMatcher` (accept, fill a row, finished) and `fill_masks`.

Compiled grammars are cached per (vocabulary, spec) in this process, so the chat service can compile a
request's grammar on a worker thread (and answer a 400 for one the engine cannot take) before the engine
thread needs it.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

from llamarun.errors import LlamarunError, RequestError
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.structured.schema_fixes import fix_schema
from llamarun.structured.vocab import GrammarVocab

CACHE_SIZE = 256  # compiled grammars kept (a nested schema on a 128k vocabulary is ~1 MB)
_LOCATION = re.compile(r"^\[[0-9:]+\] \S+:\d+: ")  # xgrammar prefixes errors with a time and a C++ file

_lock = threading.Lock()
_compilers: dict[str, Any] = {}  # vocabulary key -> xgrammar.GrammarCompiler
_compiled: OrderedDict[tuple[str, str], Any] = OrderedDict()  # (vocabulary key, spec key) -> CompiledGrammar


class GrammarUnavailableError(LlamarunError):
    """The grammar library is not installed (the engine was installed without its required dependency)."""


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as err:
        raise GrammarUnavailableError(f"structured output needs xgrammar, which cannot be imported: {err}",
                                      "pip install xgrammar") from None
    return xgrammar


def _compiler(vocab: GrammarVocab) -> Any:
    if not vocab.stop_ids:
        raise RequestError("this model has no stop token, so a grammar could never end", param="grammar")
    xgr = _xgrammar()
    with _lock:
        compiler = _compilers.get(vocab.key)
        if compiler is None:
            info = xgr.TokenizerInfo(list(vocab.tokens), xgr.VocabType.RAW, vocab_size=vocab.logits_size,
                                     stop_token_ids=list(vocab.stop_ids))
            compiler = _compilers[vocab.key] = xgr.GrammarCompiler(info, max_threads=2)
        return compiler


def compile_grammar(vocab: GrammarVocab, spec: GrammarSpec) -> Any:
    """The compiled grammar of `spec` for `vocab` (cached); a RequestError naming what the engine refused."""
    key = (vocab.key, spec.key)
    with _lock:
        hit = _compiled.get(key)
        if hit is not None:
            _compiled.move_to_end(key)
            return hit
    compiler = _compiler(vocab)
    try:
        compiled = _compile(compiler, spec)
    except (RuntimeError, ValueError, TypeError) as err:
        message = _LOCATION.sub("", str(err).strip()).strip()
        raise RequestError(f"the {_describe(spec)} cannot be enforced: {message}", param="grammar") from None
    with _lock:
        _compiled[key] = compiled
        while len(_compiled) > CACHE_SIZE:
            _compiled.popitem(last=False)
    return compiled


def _compile(compiler: Any, spec: GrammarSpec) -> Any:
    # Compact JSON (no free whitespace): small models otherwise loop on newlines inside an object.
    if spec.kind == "json":
        return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
    if spec.kind == "json_schema":
        schema = json.dumps(fix_schema(spec.value))
        return compiler.compile_json_schema(schema, any_whitespace=False, strict_mode=True)
    if spec.kind == "regex":
        return compiler.compile_regex(spec.value)
    if spec.kind == "ebnf":
        return compiler.compile_grammar(spec.value)
    alternatives = " | ".join(json.dumps(choice) for choice in spec.value)  # GBNF string literals
    return compiler.compile_grammar(f"root ::= {alternatives}")


def _describe(spec: GrammarSpec) -> str:
    return {"json": "JSON format", "json_schema": "JSON schema", "regex": "regular expression",
            "ebnf": "grammar", "choice": "choice list"}[spec.kind]


class GrammarMatcher:
    """One request's position in its grammar: accepts the tokens it generates, fills its row of a mask."""

    def __init__(self, compiled: Any) -> None:
        self._matcher = _xgrammar().GrammarMatcher(compiled)

    def accept(self, token_id: int) -> bool:
        """Advance past a sampled token; False when the grammar does not allow it (the state is unchanged)."""
        return self._matcher.accept_token(int(token_id))

    @property
    def finished(self) -> bool:
        """True once the grammar has accepted a stop token (nothing more may follow)."""
        return self._matcher.is_terminated()


def fill_masks(matchers: list[GrammarMatcher], bitmask: Any) -> None:
    """Fill row i of `bitmask` (int32 [>= len, ceil(logits_size / 32)], CPU) with matcher i's allowed tokens."""
    xgr = _xgrammar()
    if len(matchers) == 1:
        matchers[0]._matcher.fill_next_token_bitmask(bitmask, 0)
        return
    _batcher(xgr).batch_fill_next_token_bitmask([m._matcher for m in matchers], bitmask)


_batchers: dict[int, Any] = {}


def _batcher(xgr: Any) -> Any:
    # One per thread: the engine thread fills masks; a batcher holds a thread pool.
    ident = threading.get_ident()
    batcher = _batchers.get(ident)
    if batcher is None:
        batcher = _batchers[ident] = xgr.BatchGrammarMatcher(max_threads="auto")
    return batcher


def check_grammar(vocab: GrammarVocab, spec: GrammarSpec) -> None:
    """Compile `spec` now (warming the cache); raises the RequestError a client should see."""
    compile_grammar(vocab, spec)
