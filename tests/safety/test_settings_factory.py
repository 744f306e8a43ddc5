"""GuardSettings from the `serve`/`run` flags, and the factory that builds guards from them."""

from __future__ import annotations

import importlib.util

import pytest
from fake_guards import MarkerGuard

from llamarun.cli.guard_flags import guard_settings
from llamarun.cli.main import build_parser
from llamarun.errors import LlamarunError
from llamarun.safety.factory import BUILDERS, build_pipeline
from llamarun.safety.settings import AUTO, DEFAULT_PROMPT_GUARD, GuardSettings
from llamarun.safety.verdict import GuardMode


def settings(*flags: str, command: str = "serve") -> GuardSettings:
    argv = [command, *(["m"] if command == "run" else []), *flags]
    return guard_settings(build_parser().parse_args(argv))


@pytest.mark.parametrize("command", ["serve", "run"])
def test_the_same_flags_on_serve_and_run(command: str) -> None:
    s = settings("--guard", "llama-guard3:1b", "--guard-exclude", "s2, S7,S2", "--prompt-guard",
                 "--prompt-guard-mode", "warn", "--prompt-guard-threshold", "0.7", "--code-shield",
                 "--language-policy", "block", "--languages", "+ja,+zh", "--guard-stream-every", "8",
                 "--guard-hold-back", "0", command=command)
    assert s == GuardSettings(llama_guard="llama-guard3:1b", llama_guard_mode=GuardMode.BLOCK,
                              excluded_categories=("S2", "S7"), prompt_guard=DEFAULT_PROMPT_GUARD,
                              prompt_guard_mode=GuardMode.WARN, prompt_guard_threshold=0.7,
                              code_shield=GuardMode.BLOCK, language_policy=GuardMode.BLOCK, languages="+ja,+zh",
                              stream_every=8, hold_back=0)


def test_defaults_ask_for_nothing_but_the_automatic_language_policy() -> None:
    s = settings()
    assert s.llama_guard is None and s.prompt_guard is None and s.code_shield is GuardMode.OFF
    assert s.language_policy == AUTO and not s.any_explicit
    assert settings("--guard", "x", "--guard-mode", "warn").llama_guard_mode is GuardMode.WARN
    assert settings("--code-shield", "warn").code_shield is GuardMode.WARN
    assert settings("--prompt-guard", "my/model").prompt_guard == "my/model"


@pytest.mark.parametrize(("flags", "message"), [
    (["--guard-mode", "warn"], "--guard-mode is given without --guard"),
    (["--guard", "g", "--guard-mode", "loud"], "--guard-mode 'loud' is not a guard mode"),
    (["--guard", "g", "--guard-exclude", "S15"], "'S15' is not a Llama Guard category"),
    (["--guard-exclude", "S1"], "--guard-exclude is given without --guard"),
    (["--code-shield", "maybe"], "--code-shield 'maybe' is not a guard mode"),
    (["--language-policy", "strict"], "--language-policy 'strict' is not a guard mode"),
    (["--guard-stream-every", "0"], "--guard-stream-every 0 is below 1"),
    (["--guard-hold-back", "-1"], "--guard-hold-back -1 is negative"),
    (["--prompt-guard-threshold", "0.5"], "without --prompt-guard"),
    (["--prompt-guard", "--prompt-guard-threshold", "1.5"], "not in \\(0, 1\\]"),
    (["--guard", " "], "--guard is empty"),
])
def test_bad_values_are_clear_errors(flags: list[str], message: str) -> None:
    with pytest.raises(LlamarunError, match=message):
        settings(*flags)


def test_a_prompt_swallowed_by_prompt_guard_is_caught() -> None:
    with pytest.raises(LlamarunError, match="looks like a prompt"):
        settings("--prompt-guard", "why is the sky blue", command="run")


def _fake_builders(made: list, fail: set[str] = frozenset()):
    def builder(name: str):
        def build(s, ctx):
            if name in fail:
                raise ImportError(f"No module named '{name}_dependency'")
            made.append((name, ctx.source))
            return MarkerGuard({}, name=name)
        return build
    return {name: (builder(name), mode_of, flag) for name, (_, mode_of, flag) in BUILDERS.items()}


def test_the_factory_builds_what_the_settings_ask_with_their_modes() -> None:
    made: list = []
    source = object()
    p = build_pipeline(GuardSettings(llama_guard="lg", llama_guard_mode=GuardMode.WARN, prompt_guard="pg",
                                     code_shield=GuardMode.BLOCK, language_policy=GuardMode.OFF, stream_every=5,
                                     hold_back=2),
                       source=source, builders=_fake_builders(made))
    assert {d["guard"]: d["mode"] for d in p.describe()} == {"llama_guard": "warn", "prompt_guard": "block",
                                                              "code_shield": "block"}
    assert (p.stream_every, p.hold_back) == (5, 2) and made[0] == ("llama_guard", source)


def test_auto_language_policy_is_warn_when_installed_and_off_when_not() -> None:
    on = build_pipeline(GuardSettings(), builders=_fake_builders([]))
    assert on.describe() == [{"guard": "language", "mode": "warn", "kinds": sorted(MarkerGuard({}).kinds)}]
    off = build_pipeline(GuardSettings(), builders=_fake_builders([], fail={"language"}))
    assert not off  # a fresh install without the safety extra starts with no guard, no error


def test_an_explicit_guard_whose_package_is_missing_is_an_error() -> None:
    with pytest.raises(LlamarunError, match="--language-policy needs a package that is not installed") as err:
        build_pipeline(GuardSettings(language_policy=GuardMode.WARN), builders=_fake_builders([], fail={"language"}))
    assert "pip install 'llamarun[safety]'" in str(err.value)
    with pytest.raises(LlamarunError, match="--code-shield needs"):
        build_pipeline(GuardSettings(code_shield=GuardMode.WARN), builders=_fake_builders([], fail={"code_shield"}))


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not _have("llamarun.safety.language") or not _have("lingua"),
                    reason="the language policy (another helper's) or lingua is not here yet")
def test_the_real_language_policy_is_built_at_warn_by_default() -> None:
    p = build_pipeline(GuardSettings())
    assert [(d["guard"], d["mode"]) for d in p.describe()] == [("language", "warn")]


@pytest.mark.skipif(not _have("llamarun.safety.llama_guard"), reason="Llama Guard (another helper's) is not here yet")
def test_the_real_llama_guard_builder_takes_the_source() -> None:
    p = build_pipeline(GuardSettings(llama_guard="llama-guard3:1b", language_policy=GuardMode.OFF),
                       source=object())  # nothing loads until the first check
    assert [d["guard"] for d in p.describe()] == ["llama_guard"]
