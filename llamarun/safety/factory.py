"""Build the guard pipeline from GuardSettings: one small builder per guard, each importing its guard lazily.

Optional dependencies (Transformers for Prompt Guard, `codeshield`, `lingua-language-detector`) load only
when their guard is asked for; a missing one is a LlamarunError saying what to install. Llama Guard's model
is leased from a ModelSource (the server's ModelManager, or a source over one loaded model for `run`), so
it runs on the same engine hub as the main model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llamarun.errors import LlamarunError
from llamarun.safety.pipeline import DEFAULT_TIMEOUT_SECONDS, GuardPipeline, GuardSlot
from llamarun.safety.settings import AUTO, GuardSettings
from llamarun.safety.verdict import Guard, GuardMode

log = logging.getLogger("llamarun.safety")
EXTRA_HINT = "install the safety extra: pip install 'llamarun[safety]'"


@dataclass(frozen=True)
class BuildContext:
    """What builders may need besides the settings: where guard models come from."""

    source: Any = None  # a ModelSource (llm/chat_service.py) for Llama Guard's model
    keep_alive: float | None = None  # how long the source keeps the guard model loaded when idle


Builder = Callable[[GuardSettings, BuildContext], Guard]


def _llama_guard(s: GuardSettings, ctx: BuildContext) -> Guard:
    from llamarun.safety.llama_guard import build_llama_guard

    if ctx.source is None:
        raise LlamarunError("Llama Guard needs a model source", "this is a bug: pass the server's ModelManager")
    return build_llama_guard(s.llama_guard, source=ctx.source, excluded=s.excluded_categories,
                             keep_alive=ctx.keep_alive)


def _prompt_guard(s: GuardSettings, ctx: BuildContext) -> Guard:
    from llamarun.safety.prompt_guard import PromptGuard

    return PromptGuard(s.prompt_guard, threshold=s.prompt_guard_threshold)


def _code_shield(s: GuardSettings, ctx: BuildContext) -> Guard:
    from llamarun.safety.code_shield import CodeShield

    return CodeShield()


def _language_policy(s: GuardSettings, ctx: BuildContext) -> Guard:
    from llamarun.safety.language import LanguagePolicy, parse_languages

    return LanguagePolicy(parse_languages(s.languages))


# guard name -> (builder, the mode the settings give it, the flag that asks for it)
BUILDERS: dict[str, tuple[Builder, Callable[[GuardSettings], GuardMode | str], str]] = {
    "llama_guard": (_llama_guard, lambda s: s.llama_guard_mode if s.llama_guard else GuardMode.OFF, "--guard"),
    "prompt_guard": (_prompt_guard, lambda s: s.prompt_guard_mode if s.prompt_guard else GuardMode.OFF,
                     "--prompt-guard"),
    "code_shield": (_code_shield, lambda s: s.code_shield, "--code-shield"),
    "language": (_language_policy, lambda s: s.language_policy, "--language-policy"),
}


def build_pipeline(settings: GuardSettings, *, source: Any = None, keep_alive: float | None = None,
                   timeout: float = DEFAULT_TIMEOUT_SECONDS,
                   builders: Mapping[str, tuple[Builder, Callable[[GuardSettings], GuardMode | str], str]]
                   = BUILDERS) -> GuardPipeline:
    """The pipeline `settings` asks for (possibly empty: falsy). A mode of "auto" builds the guard at warn when
    its dependencies are installed and skips it otherwise; an explicit mode whose guard cannot be built is
    a LlamarunError naming the flag."""
    ctx = BuildContext(source, keep_alive)
    slots = []
    for name, (build, mode_of, flag) in builders.items():
        mode = mode_of(settings)
        if mode is GuardMode.OFF:
            continue
        try:
            guard = build(settings, ctx)
        except ImportError as err:
            if mode == AUTO:
                log.info("%s is off: %s (%s)", name, err, EXTRA_HINT)
                continue
            raise LlamarunError(f"{flag} needs a package that is not installed: {err}", EXTRA_HINT) from None
        slots.append(GuardSlot(guard, GuardMode.WARN if mode == AUTO else GuardMode(mode)))
        load = getattr(guard, "load_in_background", None)
        if load is not None:  # load what the first check would load now, not mid-reply (language.py)
            load()
    return GuardPipeline(slots, timeout=timeout, stream_every=settings.stream_every, hold_back=settings.hold_back)
