"""Per-request sampling parameters: one frozen dataclass, validated when built.

The defaults are Ollama's (temperature 0.8, top_k 40, top_p 0.9, min_p 0.0, repeat_penalty 1.1,
repeat_last_n 64), because users of `llamarun run` expect Ollama's behaviour. `SamplingParams.greedy()`
gives plain argmax decoding.

Penalty rule (one rule for all three penalties, as Ollama and llama.cpp do): the repetition,
presence and frequency penalties all count tokens in the last `repeat_last_n` tokens of
prompt + output (0 or -1: the whole context). This differs from vLLM, which counts only generated
tokens for presence/frequency; Ollama's OpenAI endpoint follows the llama.cpp rule too, and one window
keeps the bookkeeping to one count vector per request.

No torch import here: the API layer builds these while validating requests.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from llamarun.errors import RequestError
from llamarun.sampling.grammar_spec import GrammarSpec

MAX_STOP_STRINGS = 64  # generous: OpenAI allows 4, Ollama has no limit but nobody needs hundreds
MAX_STOP_STRING_CHARS = 1000
MAX_LOGPROBS = 20  # OpenAI's top_logprobs limit
_MAX_SEED = 2**64  # torch.Generator.manual_seed accepts seeds below this


class SamplingParamsError(RequestError):
    """A sampling parameter out of range (the server answers it with HTTP 400).

    `param` is the SamplingParams field at fault ("top_p", "stop"); the server reports it to OpenAI clients.
    """

    def __init__(self, message: str, hint: str | None = None, *, param: str) -> None:
        super().__init__(message, hint, param=param)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token of one request.

    temperature: 0 means greedy (argmax after penalties and grammar mask).
    top_k: keep the k most likely tokens; 0 turns it off.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p; 1.0 is off.
    min_p: drop tokens less likely than min_p times the most likely one; 0 is off.
    repetition_penalty: llama.cpp/HF style, divides positive logits and multiplies negative ones of
        tokens seen in the penalty window; 1.0 is off.
    repeat_last_n: the penalty window, in tokens of prompt + output; 0 = the whole context, -1 = num_ctx
        like Ollama (the same thing here, since a sequence never outgrows its context).
    presence_penalty: subtracted once from every token seen in the window (OpenAI formula).
    frequency_penalty: subtracted once per occurrence in the window (OpenAI formula).
    seed: makes the request reproducible, whatever else shares its batch; None draws from torch's RNG.
    max_tokens: most tokens to generate; None means until the context is full.
    stop: strings that end generation (the text up to them is returned, without them).
    stop_token_ids: token ids that end generation, on top of the model's own end-of-turn tokens.
    logprobs: None for none; n >= 0 returns the chosen token's log-probability and the n most likely.
    grammar: a GrammarSpec the output must match (JSON, a JSON schema, a regex, EBNF, a choice), or None.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    repetition_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    grammar: GrammarSpec | None = None

    @classmethod
    def greedy(cls, **overrides: Any) -> SamplingParams:
        """Plain argmax of the model's logits: no temperature, filters or penalties."""
        base: dict[str, Any] = dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                                    presence_penalty=0.0, frequency_penalty=0.0)
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def is_greedy(self) -> bool:
        """True when the token is the argmax (temperature 0)."""
        return self.temperature == 0.0

    @property
    def uses_penalties(self) -> bool:
        """True when any penalty changes logits, so token counts must be kept."""
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise SamplingParamsError(f"temperature={self.temperature} is negative",
                                      "use 0 for greedy decoding or a positive value such as 0.8", param="temperature")
        _check_int("top_k", self.top_k)
        if self.top_k < 0:
            raise SamplingParamsError(f"top_k={self.top_k} is negative", "use 0 to turn top-k off", param="top_k")
        _check_number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingParamsError(f"top_p={self.top_p} is outside (0, 1]", "use 1.0 to turn top-p off",
                                      param="top_p")
        _check_number("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise SamplingParamsError(f"min_p={self.min_p} is outside [0, 1]", "use 0 to turn min-p off",
                                      param="min_p")
        _check_number("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise SamplingParamsError(f"repetition_penalty={self.repetition_penalty} is not positive",
                                      "use 1.0 to turn it off, or a value such as 1.1", param="repetition_penalty")
        _check_int("repeat_last_n", self.repeat_last_n)
        if self.repeat_last_n < -1:
            raise SamplingParamsError(f"repeat_last_n={self.repeat_last_n} is below -1",
                                      "use a window in tokens, 0 or -1 for the whole context", param="repeat_last_n")
        _check_number("presence_penalty", self.presence_penalty)
        _check_number("frequency_penalty", self.frequency_penalty)
        if self.seed is not None:
            _check_int("seed", self.seed)
            if not 0 <= self.seed < _MAX_SEED:
                raise SamplingParamsError(f"seed={self.seed} is outside [0, 2**64)",
                                          "leave the seed out for a random one", param="seed")
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens)
            if self.max_tokens < 1:
                raise SamplingParamsError(f"max_tokens={self.max_tokens} is below 1",
                                          "ask for at least one token, or leave it out to fill the context",
                                          param="max_tokens")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs)
            if not 0 <= self.logprobs <= MAX_LOGPROBS:
                raise SamplingParamsError(f"logprobs={self.logprobs} is outside [0, {MAX_LOGPROBS}]",
                                          "ask for at most 20 top log-probabilities", param="logprobs")
        if self.grammar is not None and not isinstance(self.grammar, GrammarSpec):
            raise SamplingParamsError(f"grammar={self.grammar!r} is not a GrammarSpec",
                                      'give GrammarSpec("json_schema", {...}) or leave it out', param="grammar")
        # Lists and a lone string are common in requests; store tuples so the params stay hashable.
        object.__setattr__(self, "stop", _normalise_stops(self.stop))
        object.__setattr__(self, "stop_token_ids", _normalise_stop_ids(self.stop_token_ids))


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SamplingParamsError(f"{name}={value!r} is not a number", f"give {name} as a number", param=name)
    if not math.isfinite(value):
        raise SamplingParamsError(f"{name}={value} is not finite", f"give {name} as a finite number", param=name)


def _check_int(name: str, value: object, param: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingParamsError(f"{name}={value!r} is not an integer", f"give {name} as a whole number",
                                  param=param or name)


def _normalise_stops(stop: object) -> tuple[str, ...]:
    items = (stop,) if isinstance(stop, str) else stop
    if not isinstance(items, (tuple, list)):
        raise SamplingParamsError(f"stop={stop!r} is not a list of strings", 'give stop as ["...", ...]',
                                  param="stop")
    if len(items) > MAX_STOP_STRINGS:
        raise SamplingParamsError(f"{len(items)} stop strings given, at most {MAX_STOP_STRINGS} are allowed",
                                  "keep the stop strings that matter", param="stop")
    for s in items:
        if not isinstance(s, str):
            raise SamplingParamsError(f"stop string {s!r} is not a string", 'give stop as ["...", ...]', param="stop")
        if not s:
            raise SamplingParamsError("a stop string is empty", "remove the empty string from stop", param="stop")
        if len(s) > MAX_STOP_STRING_CHARS:
            raise SamplingParamsError(f"a stop string is {len(s)} characters long",
                                      f"keep stop strings under {MAX_STOP_STRING_CHARS} characters", param="stop")
    return tuple(items)


def _normalise_stop_ids(ids: object) -> tuple[int, ...]:
    if not isinstance(ids, (tuple, list)):
        raise SamplingParamsError(f"stop_token_ids={ids!r} is not a list of integers",
                                  "give stop_token_ids as [id, ...]", param="stop_token_ids")
    for i in ids:
        _check_int("stop token id", i, param="stop_token_ids")
        if i < 0:
            raise SamplingParamsError(f"stop token id {i} is negative", "token ids start at 0", param="stop_token_ids")
    return tuple(ids)
