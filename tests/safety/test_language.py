"""The language policy on real sentences: the eight supported languages pass, Japanese and Chinese do not,
mixed text is judged by its dominant language, and short or code-only text is never flagged on a guess."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("lingua")

from llamarun.errors import LlamarunError
from llamarun.safety.language import SUPPORTED_LANGUAGES, LanguagePolicy, parse_languages, prose_of
from llamarun.safety.verdict import Subject

SUPPORTED_SENTENCES = {
    "en": "Could you explain how photosynthesis works in simple terms?",
    "de": "Kannst du mir bitte erklären, wie die Photosynthese funktioniert?",
    "fr": "Peux-tu m'expliquer simplement comment fonctionne la photosynthèse ?",
    "it": "Puoi spiegarmi come funziona la fotosintesi in parole semplici?",
    "pt": "Você poderia me explicar como funciona a fotossíntese das plantas?",
    "hi": "क्या आप मुझे सरल शब्दों में प्रकाश संश्लेषण समझा सकते हैं?",
    "es": "¿Puedes explicarme cómo funciona la fotosíntesis con palabras sencillas?",
    "th": "คุณช่วยอธิบายว่าการสังเคราะห์ด้วยแสงทำงานอย่างไรได้ไหม",
}

UNSUPPORTED_SENTENCES = {
    "ja": "光合成の仕組みを簡単に説明してもらえますか？",
    "zh": "你能用简单的话解释一下光合作用是如何运作的吗？",
    "ko": "광합성이 어떻게 작동하는지 쉽게 설명해 줄 수 있나요?",
    "ru": "Можешь простыми словами объяснить, как работает фотосинтез?",
    "nl": "Kun je me in eenvoudige woorden uitleggen hoe fotosynthese werkt?",
}


@pytest.fixture(scope="module")
def policy() -> LanguagePolicy:
    return LanguagePolicy()


@pytest.mark.parametrize("code", sorted(SUPPORTED_SENTENCES))
def test_each_supported_language_passes_and_is_named(policy: LanguagePolicy, code: str) -> None:
    verdict = policy.judge(SUPPORTED_SENTENCES[code])
    assert verdict.safe, verdict
    assert verdict.categories == ()
    # the detector really recognised the language (not just "something allowed")
    assert max(verdict.extra["languages"], key=verdict.extra["languages"].get) == code


@pytest.mark.parametrize("code", sorted(UNSUPPORTED_SENTENCES))
def test_unsupported_languages_are_flagged_with_their_code(policy: LanguagePolicy, code: str) -> None:
    verdict = policy.judge(UNSUPPORTED_SENTENCES[code])
    assert not verdict.safe
    assert verdict.categories == (f"language:{code}",)
    assert verdict.guard == "language"
    assert verdict.score is not None and verdict.score > 0.5


def test_a_japanese_prompt_through_the_async_guard_protocol(policy: LanguagePolicy) -> None:
    verdict = asyncio.run(policy.check(Subject("input", "東京で一番おいしいラーメン屋はどこですか？")))
    assert not verdict.safe and verdict.categories == ("language:ja",)
    assert "ja" in verdict.detail and "not among the supported" in verdict.detail


def test_a_short_japanese_question_is_still_flagged_because_its_script_is_certain(policy: LanguagePolicy) -> None:
    assert policy.judge("東京の天気は？").categories == ("language:ja",)


@pytest.mark.parametrize("languages", [parse_languages("+ja"), "+ja", "en, ja"])
def test_extending_the_list_with_japanese_allows_it(languages) -> None:
    extended = LanguagePolicy(languages)
    assert extended.judge(UNSUPPORTED_SENTENCES["ja"]).safe
    assert not extended.judge(UNSUPPORTED_SENTENCES["zh"]).safe  # the others stay outside


@pytest.mark.parametrize("text", [
    "What does the Japanese word 木漏れ日 mean, and how do I pronounce it?",
    "How do I say こんにちは politely when I meet my new boss tomorrow?",
    "Please translate 谢谢 into French and German for my travel notes.",
])
def test_mostly_english_with_a_foreign_word_is_allowed(policy: LanguagePolicy, text: str) -> None:
    assert policy.judge(text).safe


@pytest.mark.parametrize("text, code", [
    ("このPythonのコードにbugがあります。直してください。", "ja"),
    ("明日の meeting は何時からですか？資料も準備しておいてください。", "ja"),
    ("我想学习machine learning，你能推荐一些入门的书吗？", "zh"),
])
def test_a_foreign_sentence_with_an_english_word_is_flagged(policy: LanguagePolicy, text: str, code: str) -> None:
    assert policy.judge(text).categories == (f"language:{code}",)


@pytest.mark.parametrize("text", ["ok", "lol", "thanks!", "yes please", "Fix this", "12345", "3.14 * 2 = 6.28", ""])
def test_short_or_letterless_text_is_not_flagged_on_a_guess(policy: LanguagePolicy, text: str) -> None:
    assert policy.judge(text).safe


def test_code_and_links_are_not_judged_as_language(policy: LanguagePolicy) -> None:
    # Japanese inside code (a string literal) and a URL do not make an English reply Japanese
    reply = ("Here is the fixed function:\n```python\ndef greet():\n    return 'こんにちは世界、お元気ですか'\n```\n"
             "See https://例え.jp/docs for details.")
    assert "こんにちは" not in prose_of(reply)
    assert policy.judge(reply).safe
    # and code alone has no language to judge
    only_code = "```js\nconst x = 1;\n```"
    assert policy.judge(only_code).safe


def test_an_unclosed_code_fence_in_a_cut_stream_is_still_code(policy: LanguagePolicy) -> None:
    assert "こんにちは" not in prose_of("Sure:\n```python\nprint('こんにちは、元気ですか')\n")


def test_a_long_japanese_reply_with_english_code_is_flagged(policy: LanguagePolicy) -> None:
    reply = "リストを並べ替えるには、sorted関数を使います。\n```python\nprint(sorted([3, 1, 2]))\n```\n簡単ですね。"
    assert policy.judge(reply).categories == ("language:ja",)


def test_min_confidence_one_flags_nothing_but_script_certain_text() -> None:
    strict_doubt = LanguagePolicy(min_confidence=1.0)
    assert strict_doubt.judge(UNSUPPORTED_SENTENCES["ja"]).categories == ("language:ja",)
    assert strict_doubt.judge("Kun je me helpen met mijn huiswerk?").safe  # Dutch, but below certainty


def test_parse_languages_adds_removes_and_replaces() -> None:
    assert parse_languages(None) == SUPPORTED_LANGUAGES
    assert parse_languages("+ja") == (*SUPPORTED_LANGUAGES, "ja")
    assert parse_languages("+JA, -th") == tuple(c for c in SUPPORTED_LANGUAGES if c != "th") + ("ja",)
    assert parse_languages("en,de") == ("en", "de")


@pytest.mark.parametrize("spec", ["+xx", "en,klingon", "en,+ja", "-en,-de,-fr,-it,-pt,-hi,-es,-th"])
def test_bad_language_lists_are_user_errors(spec: str) -> None:
    with pytest.raises(LlamarunError):
        parse_languages(spec)


@pytest.mark.parametrize("kwargs", [{"languages": ["en", "zz"]}, {"languages": []}, {"languages": ""},
                                    {"languages": "+zz"}, {"min_confidence": 1.5},
                                    {"min_confidence": -0.1}, {"min_letters": -1}])
def test_bad_constructor_arguments_are_user_errors(kwargs: dict) -> None:
    with pytest.raises(LlamarunError):
        LanguagePolicy(**kwargs)


def test_the_guard_declares_its_kinds(policy: LanguagePolicy) -> None:
    assert policy.name == "language"
    assert policy.kinds == frozenset({"input", "output"})


def test_warm_up_loads_the_models_once_in_the_background(monkeypatch) -> None:
    """The pipeline warms the policy up at start-up, so the first reply is not judged while the models load;
    one thread per detector, however many policies share it."""
    import threading

    from llamarun.safety import language
    from llamarun.safety.factory import build_pipeline
    from llamarun.safety.settings import GuardSettings
    from llamarun.safety.verdict import GuardMode

    started = []
    real = threading.Thread
    monkeypatch.setattr(language, "_WARMING", set())
    monkeypatch.setattr(language.threading, "Thread", lambda *a, **k: started.append(k) or real(*a, **k))
    pipeline = build_pipeline(GuardSettings(language_policy=GuardMode.WARN))
    asyncio.run(pipeline.warm_up())  # a server's start-up hook: returns at once, the same detector already loading
    assert [k["name"] for k in started] == ["llamarun-lingua-warm-up"]
    LanguagePolicy("en").load_in_background()  # fewer candidates: another detector
    assert len(started) == 2
    for kwargs in started:  # the warm-up judges its text without error, from a thread of its own (it renices it)
        errors = []
        thread = real(target=_capture, args=(errors, kwargs["target"], *kwargs["args"]))
        thread.start()
        thread.join()
        assert errors == []


def _capture(errors: list, target, *args) -> None:
    try:
        target(*args)
    except Exception as err:  # surfaced by the test's assert, not lost in the thread
        errors.append(err)
