"""Structured output: a request's GrammarSpec compiled for the model's vocabulary, and its per-step token mask.

`vocab.py` (the token bytes a grammar is compiled against; no torch), `engine.py` (the one module that
imports the grammar library, xgrammar; compiled-grammar cache, matchers), `bitmask.py` (packed int32 masks
filled on the host for the rows with a grammar and applied to those logits rows on their device).
"""
