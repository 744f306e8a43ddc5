"""Sampling: per-request parameters, the batched sync-free sampler, and stop strings.

`SamplingParams` and `StopStringMatcher` import no torch; the sampler classes load torch on first use,
so request validation stays light.
"""

from __future__ import annotations

from typing import Any

from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams, SamplingParamsError
from llamarun.sampling.stop import StopStringMatcher

__all__ = ["GrammarSpec", "Sampler", "SamplerOutput", "SamplerState", "SamplingParams", "SamplingParamsError",
           "StopStringMatcher"]

_LAZY = {"Sampler", "SamplerOutput", "SamplerState"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from llamarun.sampling import sampler

        return getattr(sampler, name)
    raise AttributeError(f"module 'llamarun.sampling' has no attribute {name!r}")
