"""The language policy: is a prompt or a reply in a language the deployment supports?

Llama 3.3's model card lists eight supported languages and asks developers not to let the model converse in
others without their own tuning and checks. This guard detects the language of a subject with lingua (a
real n-gram detector, `lingua-language-detector`) and calls a subject unsafe when most of its prose is in a
language outside the allowed list. How it decides, and why:

- Only prose counts: fenced and inline code, URLs and e-mail addresses are removed first, because code and
  links are not in any natural language and would pull the detector towards English.
- Mixed text is judged by its dominant language: lingua splits the prose into single-language sections, each
  weighted by its letters (a CJK, kana, hangul or Thai character counts double, as it carries about what two
  Latin letters do). "Explain the word 木漏れ日" is English and allowed; a Japanese sentence with one
  English word is Japanese and flagged.
- Doubt is allowed, not flagged: the dominant unsupported language must reach `min_confidence` (lingua's
  confidence for it on its own sections), and text under `min_letters` letters is flagged only when its
  script leaves no doubt (confidence >= 0.99: kana, hangul, Thai, Han). "ok", "thanks!" or "12345" pass.
- The detector knows the allowed languages plus OTHER_LANGUAGES, so it can name a text that is in none of
  the allowed ones. A language in neither list is reported as its nearest known one (Catalan may read as
  Spanish); extending OTHER_LANGUAGES costs memory and load time (lingua's high-accuracy models are ~20 MB
  per Latin-script language; all 75 languages take 26 s and 1.3 GB, which is why they are not the default).

The detector is built once per language set and shared (building is cheap; lingua loads each language's
models on first use, or at construction with `preload=True`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import threading
import unicodedata
from collections.abc import Iterable

from llamarun.errors import LlamarunError
from llamarun.safety.verdict import Subject, Verdict

# Llama 3.3's eight supported languages (model card), as ISO 639-1 codes.
SUPPORTED_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "it", "pt", "hi", "es", "th")

# Languages the detector also knows, so that a text in none of the allowed languages gets its own name instead of
# the nearest allowed one: the most used languages on the web and in chat, and Dutch (which would otherwise read as
# German). Marathi is left out on purpose: lingua confuses short Hindi with it, and a false alarm on a supported
# language is worse than Marathi passing as Hindi.
OTHER_LANGUAGES: tuple[str, ...] = ("ja", "zh", "ko", "ru", "uk", "ar", "fa", "tr", "vi", "id", "nl", "pl", "sv")

_CODE_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)  # an unclosed fence (a stream cut mid-block) too
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_URL_OR_MAIL = re.compile(r"(?:https?://|www\.)\S+|\S+@\S+\.\w+")
_SCRIPT_CERTAIN = 0.99  # lingua gives 1.0 when the script alone decides (kana, hangul, Thai)


def parse_languages(spec: str | None, flag: str = "--languages") -> tuple[str, ...]:
    """The allowed languages from a flag value: None or "" gives SUPPORTED_LANGUAGES; "+ja,ko" adds to them;
    "-th" removes one; "en,de" replaces them. Unknown codes are a LlamarunError naming `flag`."""
    if not spec or not spec.strip():
        return SUPPORTED_LANGUAGES
    items = [item.strip().lower() for item in spec.split(",") if item.strip()]
    relative = all(item[0] in "+-" for item in items)
    if not relative and any(item[0] in "+-" for item in items):
        raise LlamarunError(f"{flag} '{spec}' mixes a list with +/- changes", "give 'en,de' or '+ja,-th'")
    allowed = list(SUPPORTED_LANGUAGES) if relative else []
    for item in items:
        code = _check_code(item.lstrip("+-"), flag)
        if item.startswith("-"):
            allowed = [have for have in allowed if have != code]
        elif code not in allowed:
            allowed.append(code)
    if not allowed:
        raise LlamarunError(f"{flag} '{spec}' leaves no language allowed", "keep at least one language")
    return tuple(allowed)


def _check_code(code: str, flag: str) -> str:
    """`code` if lingua can detect that language; else a LlamarunError listing the codes it can."""
    from lingua import IsoCode639_1, Language

    try:
        iso = IsoCode639_1.from_str(code)
    except ValueError:
        iso = None
    known = {language.iso_code_639_1 for language in Language.all()}
    if iso is None or iso not in known:
        codes = ", ".join(sorted(language.iso_code_639_1.name.lower() for language in Language.all()))
        raise LlamarunError(f"{flag}: '{code}' is not an ISO 639-1 code the language detector knows",
                            f"use one of {codes}")
    return code


_BUILD_LOCK = threading.Lock()
_WARMING: set[int] = set()  # detectors (by id) whose models a warm-up thread has loaded or is loading
# What `load_in_background` judges: a Latin-script paragraph makes lingua load every Latin-script candidate's
# models, which the first English (or French, German, ...) reply would otherwise load mid-stream.
_WARM_UP_TEXT = ("The language models load on first use; this paragraph makes them load now, before any reply "
                 "is judged. Ceci est une phrase. Dies ist ein Satz. Esta es una frase.")


@functools.lru_cache(maxsize=8)
def _detector(codes: frozenset[str], preload: bool):  # -> lingua.LanguageDetector
    """One detector per language set, shared by every policy that uses the same set."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(IsoCode639_1.from_str(code)) for code in sorted(codes)]
    builder = LanguageDetectorBuilder.from_languages(*languages)
    if preload:
        builder = builder.with_preloaded_language_models()
    return builder.build()


def _judge_at_low_priority(policy: LanguagePolicy, text: str) -> None:
    """`policy.judge(text)` from a thread that first lowers its own priority (Linux: nice 19 for this thread only;
    lingua loads in the calling thread), so that on a small machine the engine's prompt and decode keep the cores."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: load at normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    policy.judge(text)


def prose_of(text: str) -> str:
    """`text` without code, URLs and e-mail addresses: the part that is in a natural language."""
    for pattern in (_CODE_FENCE, _INLINE_CODE, _URL_OR_MAIL):
        text = pattern.sub(" ", text)
    return text


def _letter_weight(text: str) -> int:
    """Letters in `text`, a wide-script character (CJK, kana, hangul, Thai) counting two."""
    weight = 0
    for char in text:
        if not char.isalpha() and unicodedata.category(char) not in ("Mn", "Mc"):
            continue
        weight += 2 if _is_wide_script(char) else 1
    return weight


def _is_wide_script(char: str) -> bool:
    point = ord(char)
    return (0x0E00 <= point <= 0x0E7F  # Thai
            or 0x3040 <= point <= 0x30FF  # hiragana, katakana
            or 0x3400 <= point <= 0x9FFF  # CJK ideographs
            or 0xAC00 <= point <= 0xD7AF)  # hangul syllables


class LanguagePolicy:
    """The guard that flags prompts and replies written mostly in a language outside `languages`.

    languages: allowed ISO 639-1 codes (default: Llama 3.3's eight), or a flag value for parse_languages
        ("+ja", "en,de").
    min_confidence: lingua's confidence (0..1) the dominant unsupported language needs before it is flagged.
    min_letters: below this many letters, only a script-certain text is flagged.
    preload: load every language model now (seconds, hundreds of MB) instead of on first use.
    """

    name = "language"
    kinds = frozenset({"input", "output"})

    def __init__(self, languages: Iterable[str] = SUPPORTED_LANGUAGES, *, min_confidence: float = 0.5,
                 min_letters: int = 10, preload: bool = False) -> None:
        if isinstance(languages, str):
            languages = parse_languages(languages) if languages.strip() else ()
        allowed = tuple(dict.fromkeys(_check_code(code.strip().lower(), "language") for code in languages))
        if not allowed:
            raise LlamarunError("the language policy needs at least one allowed language")
        if not 0.0 <= min_confidence <= 1.0:
            raise LlamarunError(f"language confidence {min_confidence} is outside 0..1", "give a value in 0..1")
        if min_letters < 0:
            raise LlamarunError(f"min_letters {min_letters} is negative")
        self.languages = allowed
        self.min_confidence = min_confidence
        self.min_letters = min_letters
        self._candidates = frozenset(allowed) | frozenset(OTHER_LANGUAGES)
        with _BUILD_LOCK:
            self._lingua = _detector(self._candidates, preload)

    def load_in_background(self) -> None:
        """Start loading the language models in a background thread (once per detector), so that the first reply
        judged does not pay for it while the engine decodes: about 3 s of CPU for the Latin-script candidates,
        which on a 2-core machine cut `llamarun run`'s decode from 129 to 36-42 tok/s (2026-11-30)."""
        with _BUILD_LOCK:
            if id(self._lingua) in _WARMING:
                return
            _WARMING.add(id(self._lingua))
        threading.Thread(target=_judge_at_low_priority, args=(self, _WARM_UP_TEXT), daemon=True,
                         name="llamarun-lingua-warm-up").start()

    async def warm_up(self) -> None:
        """The pipeline's start-up hook (a server awaits it): the models load in the background, nothing waits."""
        self.load_in_background()

    async def check(self, subject: Subject) -> Verdict:
        """Judge `subject`'s language; off the event loop, as a first use may load language models."""
        return await asyncio.to_thread(self.judge, subject.text)

    def judge(self, text: str) -> Verdict:
        """The verdict for `text`, synchronously (see the module docstring for the rules)."""
        prose = prose_of(text)
        letters = _letter_weight(prose)
        if letters == 0:
            return Verdict(self.name, True, detail="no natural-language text to judge")
        shares = self._shares(prose)
        dominant = max(shares, key=shares.__getitem__)
        outside = sum(share for code, share in shares.items() if code not in self.languages)
        extra = {"languages": {code: round(share, 3) for code, share in shares.items()}}
        if dominant in self.languages:
            return Verdict(self.name, True, score=outside, detail=f"written in {dominant}", extra=extra)
        confidence = self._confidence(prose, dominant)
        extra["confidence"] = round(confidence, 3)
        score = outside * confidence  # how much of the text is outside the list, discounted by doubt
        if confidence < self.min_confidence:
            return Verdict(self.name, True, score=score, extra=extra,
                           detail=f"maybe {dominant}, but not sure enough ({confidence:.2f})")
        if letters < self.min_letters and confidence < _SCRIPT_CERTAIN:
            return Verdict(self.name, True, score=score, extra=extra,
                           detail=f"too short to tell (maybe {dominant})")
        allowed = ", ".join(self.languages)
        return Verdict(self.name, False, categories=(f"language:{dominant}",), score=score, extra=extra,
                       detail=f"written in {dominant}, which is not among the supported languages ({allowed})")

    def _shares(self, prose: str) -> dict[str, float]:
        """Each detected language's share of the prose's letter weight, largest first."""
        weights: dict[str, int] = {}
        for section in self._lingua.detect_multiple_languages_of(prose):
            code = section.language.iso_code_639_1.name.lower()
            weight = _letter_weight(prose[section.start_index:section.end_index])
            weights[code] = weights.get(code, 0) + weight
        total = sum(weights.values())
        if total == 0:  # lingua found no section (all letters unknown to it): judge the whole text as one
            language = self._lingua.detect_language_of(prose)
            return {language.iso_code_639_1.name.lower(): 1.0} if language is not None else {"und": 0.0}
        return {code: weight / total for code, weight in sorted(weights.items(), key=lambda kv: -kv[1])}

    def _confidence(self, prose: str, code: str) -> float:
        """lingua's confidence that the sections it gave to `code` are in that language."""
        from lingua import IsoCode639_1, Language

        if code == "und":
            return 0.0
        language = Language.from_iso_code_639_1(IsoCode639_1.from_str(code))
        sections = [prose[s.start_index:s.end_index] for s in self._lingua.detect_multiple_languages_of(prose)
                    if s.language == language]
        return self._lingua.compute_language_confidence(" ".join(sections) or prose, language)
