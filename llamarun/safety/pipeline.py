"""GuardPipeline: the configured guards with their modes, run concurrently on the subjects of a request.

The pipeline is the one place where a verdict meets its guard's mode: `check` runs every guard that is not
off and wants the subject's kind, all at once (asyncio.gather), and returns a `Judgement` saying whether the
request is blocked and which verdicts warn. A guard that raises or runs past the timeout is not a silent
pass: `check` raises `GuardUnavailable` naming it, which the server answers with a 503 (a deployment that
asked for a guard must not serve unguarded text because the guard broke).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from llamarun.errors import LlamarunError
from llamarun.safety.verdict import Guard, GuardMode, Subject, Verdict

log = logging.getLogger("llamarun.safety")
DEFAULT_TIMEOUT_SECONDS = 120.0  # a Llama Guard prefill of a long conversation on a CPU takes seconds


class GuardUnavailable(LlamarunError):
    """A guard failed or timed out: the request cannot be judged, so it is not answered (HTTP 503)."""

    http_status = 503
    code = "guard_unavailable"

    def __init__(self, guard: str, reason: str) -> None:
        super().__init__(f"the safety guard '{guard}' failed: {reason}",
                         "the server's guards must run for every request; check the server log")
        self.guard = guard


@dataclass(frozen=True)
class GuardSlot:
    """One configured guard and what its unsafe verdicts do."""

    guard: Guard
    mode: GuardMode


@dataclass(frozen=True)
class Finding:
    """A verdict, the subject kind it was about and the mode of the guard that gave it."""

    verdict: Verdict
    kind: str
    mode: GuardMode
    seconds: float = 0.0  # how long the check took

    @property
    def action(self) -> str:
        """"pass" for a safe verdict, else the guard's mode ("warn" or "block")."""
        return "pass" if self.verdict.safe else self.mode.value

    def to_json(self) -> dict:
        v = self.verdict
        out = {"guard": v.guard, "kind": self.kind, "action": self.action, "safe": v.safe,
               "categories": list(v.categories), "score": v.score}
        if v.detail:
            out["detail"] = v.detail
        return out


@dataclass(frozen=True)
class Judgement:
    """Every finding of one check, and what they add up to."""

    findings: tuple[Finding, ...] = ()

    @property
    def blocked(self) -> bool:
        return any(f.action == "block" for f in self.findings)

    @property
    def flagged(self) -> tuple[Finding, ...]:
        """The unsafe findings (blocking and warning), in guard order."""
        return tuple(f for f in self.findings if not f.verdict.safe)

    def categories(self) -> list[str]:
        """The categories of the unsafe findings, each once, in order."""
        return list(dict.fromkeys(c for f in self.flagged for c in f.verdict.categories))

    def __add__(self, other: Judgement) -> Judgement:
        return Judgement(self.findings + other.findings)


Observer = Callable[[Finding], None]  # told of each recorded finding (/metrics counts them)


class GuardPipeline:
    """The guards of a server or a `run`, each with its mode; guards with mode off are dropped here.

    timeout: seconds one check may take before the request is answered with GuardUnavailable;
    stream_every / hold_back: how output guards follow a stream (safety/output_stage.py).
    """

    def __init__(self, slots: Iterable[GuardSlot], *, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 stream_every: int = 32, hold_back: int = 16) -> None:
        self.slots = tuple(s for s in slots if s.mode is not GuardMode.OFF)
        names = [s.guard.name for s in self.slots]
        if len(set(names)) != len(names):
            raise LlamarunError(f"two guards share a name: {names}", "configure each guard once")
        if stream_every < 1 or hold_back < 0:
            raise LlamarunError(f"guard stream_every={stream_every}, hold_back={hold_back}",
                                "stream_every must be at least 1 and hold_back at least 0")
        self.timeout, self.stream_every, self.hold_back = timeout, stream_every, hold_back
        self.observers: list[Observer] = []

    def __bool__(self) -> bool:
        return bool(self.slots)

    async def warm_up(self) -> None:
        """Load what the guards need now (a server calls this at start-up), so a guard that cannot load stops
        the start instead of failing every request with a 503 later."""
        for slot in self.slots:
            warm_up = getattr(slot.guard, "warm_up", None)
            if warm_up is not None:
                await warm_up()

    def wants(self, kind: str) -> bool:
        """Whether any guard judges subjects of `kind`."""
        return any(kind in s.guard.kinds for s in self.slots)

    def describe(self) -> list[dict]:
        """Each guard's name, mode and kinds (for logs and the moderation endpoints)."""
        return [{"guard": s.guard.name, "mode": s.mode.value, "kinds": sorted(s.guard.kinds)} for s in self.slots]

    async def check(self, subjects: Sequence[Subject], *, record: bool = True) -> Judgement:
        """Run every guard on every subject of a kind it wants, concurrently; GuardUnavailable if one fails.

        record: log the flagged findings and tell the observers (/metrics). A stream's intermediate checks
        pass False and record only the judgement that ends it, so one reply counts once.
        """
        jobs = [(slot, subject) for subject in subjects for slot in self.slots if subject.kind in slot.guard.kinds]
        if not jobs:
            return Judgement()
        results = await asyncio.gather(*(self._run(slot, subject) for slot, subject in jobs),
                                       return_exceptions=True)
        findings = []
        for (slot, subject), result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                raise _unavailable(slot.guard.name, result) from result
            verdict, seconds = result
            findings.append(Finding(verdict, subject.kind, slot.mode, seconds))
        judgement = Judgement(tuple(findings))
        if record:
            self.record(judgement)
        return judgement

    def record(self, judgement: Judgement) -> None:
        """Log the flagged findings and tell the observers about every finding."""
        for f in judgement.findings:
            for observe in self.observers:
                observe(f)
        for f in judgement.flagged:
            log.warning("guard %s: %s %s (%s) %s", f.verdict.guard, f.action, f.kind,
                        ",".join(f.verdict.categories) or "unsafe", f.verdict.detail)

    async def _run(self, slot: GuardSlot, subject: Subject) -> tuple[Verdict, float]:
        t0 = time.perf_counter()
        try:
            verdict = await asyncio.wait_for(slot.guard.check(subject), self.timeout)
        except TimeoutError:
            raise GuardUnavailable(slot.guard.name, f"no verdict within {self.timeout:g} s") from None
        if not isinstance(verdict, Verdict):
            raise GuardUnavailable(slot.guard.name, f"it returned {type(verdict).__name__}, not a Verdict")
        return verdict, time.perf_counter() - t0


def _unavailable(name: str, err: BaseException) -> GuardUnavailable:
    if isinstance(err, GuardUnavailable):
        return err
    log.error("guard %s raised", name, exc_info=err)
    return GuardUnavailable(name, f"{type(err).__name__}: {err}")
