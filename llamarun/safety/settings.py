"""GuardSettings: which guards run and how, as plain data (from `serve`/`run` flags; safety/factory.py builds them).

The language policy's default is "auto": warn when the language detector (`lingua-language-detector`, the
`safety` extra) is installed, off when it is not, so a fresh install without the extra starts as before
while a Japanese prompt to a Llama 3.3 server with the extra gets a warning, as Meta's model card asks.
Asking for it explicitly (`--language-policy warn|block`) without the detector is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llamarun.errors import LlamarunError
from llamarun.safety.verdict import GuardMode

DEFAULT_PROMPT_GUARD = "meta-llama/Prompt-Guard-86M"
DEFAULT_PROMPT_GUARD_THRESHOLD = 0.9  # only confident injection/jailbreak scores count
DEFAULT_STREAM_EVERY = 32  # tokens between output checks of a stream
DEFAULT_HOLD_BACK = 16  # checked tokens still held back, in case the next words change the verdict
AUTO = "auto"


@dataclass(frozen=True)
class GuardSettings:
    """Every guard's model and mode; a guard whose model is None or whose mode is off is not built.

    language_policy: a GuardMode, or "auto" (warn if the detector is installed, else off).
    languages: the `--languages` value as given ("+ja,+zh" adds to Llama 3.3's eight; the language policy
    parses it).
    """

    llama_guard: str | None = None
    llama_guard_mode: GuardMode = GuardMode.BLOCK
    excluded_categories: tuple[str, ...] = ()
    prompt_guard: str | None = None
    prompt_guard_mode: GuardMode = GuardMode.BLOCK
    prompt_guard_threshold: float = DEFAULT_PROMPT_GUARD_THRESHOLD
    code_shield: GuardMode = GuardMode.OFF
    language_policy: GuardMode | str = AUTO
    languages: str | None = None
    stream_every: int = DEFAULT_STREAM_EVERY
    hold_back: int = DEFAULT_HOLD_BACK

    def __post_init__(self) -> None:
        if self.stream_every < 1:
            raise LlamarunError(f"--guard-stream-every {self.stream_every} is below 1",
                                "give how many tokens pass between output checks, e.g. 32")
        if self.hold_back < 0:
            raise LlamarunError(f"--guard-hold-back {self.hold_back} is negative",
                                "give how many checked tokens to hold back, e.g. 16 (0: none)")
        if not (0.0 < self.prompt_guard_threshold <= 1.0) or math.isnan(self.prompt_guard_threshold):
            raise LlamarunError(f"--prompt-guard-threshold {self.prompt_guard_threshold} is not in (0, 1]",
                                "give a probability such as 0.9")
        if self.excluded_categories and self.llama_guard is None:
            raise LlamarunError("--guard-exclude is given without --guard", "add --guard llama-guard3:1b")

    @property
    def any_explicit(self) -> bool:
        """Whether a guard was asked for (the automatic language policy does not count)."""
        return bool(self.llama_guard or self.prompt_guard or self.code_shield is not GuardMode.OFF
                    or self.language_policy not in (AUTO, GuardMode.OFF))


def parse_categories(value: str | None) -> tuple[str, ...]:
    """`--guard-exclude S2,s7` as ("S2", "S7"); anything but S1..S14 is an error."""
    if not value:
        return ()
    out = []
    for part in value.split(","):
        code = part.strip().upper()
        if not code:
            continue
        if not (code.startswith("S") and code[1:].isdigit() and 1 <= int(code[1:]) <= 14):
            raise LlamarunError(f"--guard-exclude '{part.strip()}' is not a Llama Guard category",
                                "give codes S1 to S14, comma-separated, e.g. S2,S7")
        out.append(code)
    return tuple(dict.fromkeys(out))


def parse_mode(value: str | None, flag: str, default: GuardMode) -> GuardMode:
    """A mode flag's value (None: `default`)."""
    return default if value is None else GuardMode.parse(value, flag)


def parse_language_policy(value: str | None) -> GuardMode | str:
    """`--language-policy`: off, warn, block or auto (the default)."""
    if value is None or value.strip().lower() == AUTO:
        return AUTO
    return GuardMode.parse(value, "--language-policy")
