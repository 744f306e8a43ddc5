"""GuardPipeline: modes, kinds, concurrency, and guards that fail or hang (never a silent pass)."""

from __future__ import annotations

import asyncio
import time

import pytest
from fake_guards import UNSAFE, MarkerGuard, RaisingGuard, SlowGuard, pipeline

from llamarun.errors import LlamarunError
from llamarun.safety.pipeline import GuardPipeline, GuardSlot, GuardUnavailable
from llamarun.safety.verdict import GuardMode, Subject, Verdict


def check(p: GuardPipeline, *subjects: Subject):
    return asyncio.run(p.check(list(subjects)))


def test_block_warn_and_pass_follow_each_guards_mode() -> None:
    strict, lenient = MarkerGuard({"BOMB": "S9"}, name="strict"), MarkerGuard({"HATEWORD": "S10"}, name="lenient")
    p = pipeline((strict, "block"), (lenient, "warn"))
    clean = check(p, Subject("input", "a recipe for bread"))
    assert not clean.blocked and clean.flagged == () and len(clean.findings) == 2
    warned = check(p, Subject("input", "hateword"))
    assert not warned.blocked and [f.action for f in warned.flagged] == ["warn"]
    assert warned.categories() == ["S10"]
    blocked = check(p, Subject("input", "a bomb and a hateword"))
    assert blocked.blocked and blocked.categories() == ["S9", "S10"]
    assert {f.verdict.guard: f.action for f in blocked.findings} == {"strict": "block", "lenient": "warn"}


def test_off_guards_never_run() -> None:
    off = MarkerGuard(dict(UNSAFE))
    p = pipeline((off, "off"))
    assert not p and p.slots == ()
    assert check(p, Subject("input", "bomb")).findings == ()
    assert off.seen == []


def test_a_guard_sees_only_the_kinds_it_wants() -> None:
    inputs_only = MarkerGuard(dict(UNSAFE), name="in", kinds=frozenset({"input"}))
    everything = MarkerGuard(dict(UNSAFE), name="all")
    p = pipeline((inputs_only, "block"), (everything, "block"))
    check(p, Subject("input", "hi"), Subject("tool_result", "bomb"), Subject("tool_call", "{}"))
    assert [s.kind for s in inputs_only.seen] == ["input"]
    assert sorted(s.kind for s in everything.seen) == ["input", "tool_call", "tool_result"]
    assert p.wants("tool_result") and not pipeline((inputs_only, "block")).wants("output")


def test_guards_run_concurrently() -> None:
    guards = [SlowGuard(0.3, name=f"slow{i}") for i in range(4)]
    p = pipeline(*((g, "block") for g in guards))
    t0 = time.perf_counter()
    out = check(p, Subject("input", "a"), Subject("tool_result", "b"))
    took = time.perf_counter() - t0
    assert len(out.findings) == 8 and all(g.calls == 2 for g in guards)
    assert took < 0.3 * 8 / 2, f"8 checks of 0.3 s took {took:.2f} s: they did not overlap"


@pytest.mark.parametrize("mode", ["block", "warn"])
def test_a_guard_that_raises_is_an_error_naming_it(mode: str) -> None:
    p = pipeline((MarkerGuard(dict(UNSAFE)), "block"), (RaisingGuard(name="broken"), mode))
    with pytest.raises(GuardUnavailable, match=r"'broken'.*RuntimeError: the guard model crashed") as err:
        check(p, Subject("input", "hello"))
    assert err.value.http_status == 503 and err.value.guard == "broken"


def test_a_guard_past_the_timeout_is_an_error() -> None:
    p = pipeline((SlowGuard(5.0, name="stuck"), "warn"), timeout=0.1)
    t0 = time.perf_counter()
    with pytest.raises(GuardUnavailable, match=r"'stuck'.*no verdict within 0.1 s"):
        check(p, Subject("input", "hello"))
    assert time.perf_counter() - t0 < 2


def test_a_guard_returning_something_else_is_an_error() -> None:
    class Sloppy:
        name, kinds = "sloppy", frozenset({"input"})

        async def check(self, subject: Subject) -> Verdict:
            return "safe"  # type: ignore[return-value]

    with pytest.raises(GuardUnavailable, match=r"'sloppy'.*str, not a Verdict"):
        check(pipeline((Sloppy(), "block")), Subject("input", "x"))


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(LlamarunError, match="two guards share a name"):
        pipeline((MarkerGuard({}, name="a"), "block"), (MarkerGuard({}, name="a"), "warn"))
    with pytest.raises(LlamarunError, match="stream_every=0"):
        pipeline((MarkerGuard({}), "block"), stream_every=0)
    with pytest.raises(LlamarunError, match="'loud' is not a guard mode"):
        GuardMode.parse("loud", "--guard-mode")


def test_observers_see_recorded_findings_only() -> None:
    p = pipeline((MarkerGuard(dict(UNSAFE)), "block"))
    seen = []
    p.observers.append(seen.append)
    asyncio.run(p.check([Subject("input", "bomb")], record=False))
    assert seen == []
    check(p, Subject("input", "bomb"), Subject("input", "fine"))
    assert [(f.action, f.verdict.categories) for f in seen] == [("block", ("S9",)), ("pass", ())]
    assert all(f.seconds >= 0 for f in seen)


def test_slots_keep_their_guard_and_mode() -> None:
    g = MarkerGuard({})
    assert GuardPipeline([GuardSlot(g, GuardMode.WARN)]).describe() == [
        {"guard": "marker", "mode": "warn", "kinds": ["input", "output", "tool_call", "tool_result"]}]
