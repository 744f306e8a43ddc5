"""`LlamaGuard`: Llama Guard 3 as a guard, run as a second model on llamarun's own engine.

One check: the subject becomes Meta's prompt (prompt.py) for the guard's template style, the model writes
its verdict greedily (a few tokens, the top-20 log-probabilities of each), and the text is parsed
(parse.py) while the probability of "unsafe" at the verdict token is the score (score.py).

Decision: when the text reads cleanly and the score is known, the score decides (unsafe when
P(unsafe) >= threshold, Meta's "score thresholding"); the categories come from the text. A malformed text
is unsafe with the category "unparsed" whatever the score, and so is an "unsafe" whose categories could not
all be read (fail closed). When the model flags only
excluded categories, the verdict is safe, as Meta's reference shield does: the deployment said it does not
care about them. A guard that cannot run (its model fails to load or step) raises LlamarunError.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llamarun.errors import LlamarunError
from llamarun.safety.llama_guard.categories import PROMPT_NAMES, active_categories, describe, normalise_codes
from llamarun.safety.llama_guard.conversation import conversation, subject_role
from llamarun.safety.llama_guard.fit import fit_prompt
from llamarun.safety.llama_guard.model_handle import GuardModel, LoadedModel
from llamarun.safety.llama_guard.parse import UNPARSED, ParsedVerdict, parse_verdict
from llamarun.safety.llama_guard.prompt import PromptStyle, detect_style
from llamarun.safety.llama_guard.score import UnsafeScore, unsafe_score, verdict_token_id
from llamarun.safety.verdict import Subject, Verdict

if TYPE_CHECKING:
    from llamarun.engine.step import SampledToken
    from llamarun.llm.served import ServedModel
    from llamarun.sampling.grammar_spec import GrammarSpec

MAX_VERDICT_TOKENS = 48  # "\n\nunsafe\nS1,S2,...,S14" is 31 Llama 3 tokens; a longer answer is malformed
TOP_LOGPROBS = 20  # the engine's limit; see score.py for when "unsafe" is not among them


@dataclass(frozen=True)
class _ModelSpec:
    """What a check needs to know of the guard model, worked out once per loaded model."""

    style: PromptStyle
    categories: dict[str, str]
    unsafe_id: int | None


class LlamaGuard:
    """Judges subjects with a Llama Guard 3 model (name "llama_guard"; kinds input, output, tool_call,
    tool_result).

    model: a loaded ServedModel, or a GuardModel (model_handle.LeasedModel: a name leased per check).
    excluded: category codes to leave out of the prompt ("S6", "s14"); codes outside S1..S14 are an error.
    threshold: P(unsafe) at or above which the verdict is unsafe.
    categories: a custom list (code -> description) replacing the model's own, as the 1B template allows.
    style: the prompt style; by default the model's own template says (prompt.detect_style), and a model
        whose template is not a Llama Guard 3 one gets the 8B's.
    grammar: constrains the model's answer (tests force verdicts with it); the score stays the model's own.
    """

    name = "llama_guard"
    kinds = frozenset({"input", "output", "tool_call", "tool_result"})

    def __init__(self, model: ServedModel | GuardModel, *, excluded: Sequence[str] = (), threshold: float = 0.5,
                 categories: Mapping[str, str] | None = None, style: PromptStyle | None = None,
                 grammar: GrammarSpec | None = None) -> None:
        if not 0.0 < threshold <= 1.0:
            raise LlamarunError(f"Llama Guard threshold {threshold} is outside (0, 1]", "use a value such as 0.5")
        self.excluded = normalise_codes(excluded) if categories is None else tuple(c.upper() for c in excluded)
        if categories is not None:
            active_categories((), self.excluded, categories)  # refuses an empty list now, not at the first check
        self.threshold, self.custom, self.style, self.grammar = threshold, categories, style, grammar
        self.model: GuardModel = model if hasattr(model, "use") else LoadedModel(model)  # type: ignore[arg-type]
        self._specs: dict[int, _ModelSpec] = {}

    async def warm_up(self) -> PromptStyle:
        """Get the model now (at serve start-up, so a bad guard name fails early); its prompt style."""
        async with self.model.use() as served:
            return self._spec(served).style

    async def check(self, subject: Subject) -> Verdict:
        """Judge one subject (see the module docstring for how the verdict is decided)."""
        async with self.model.use() as served:
            spec = self._spec(served)
            ids, trimmed = fit_prompt(served, conversation(subject), spec.categories, spec.style,
                                      MAX_VERDICT_TOKENS)
            tokens, finish = await self._generate(served, ids)
            text = served.tokenizer.decode([t.token_id for t in tokens], skip_special=True)
            score = unsafe_score(tokens, served.tokenizer, spec.unsafe_id)
        parsed = parse_verdict(text, known=tuple(spec.categories), truncated=finish == "length")
        extra = {"text": text, "token_ids": [t.token_id for t in tokens], "role": subject_role(subject),
                 "style": spec.style.value, "problems": list(parsed.problems), "prompt_tokens": len(ids),
                 "trimmed_input": trimmed, "score_is_bound": bool(score and score.bound)}
        return self._decide(parsed, score, extra)

    async def _generate(self, served: ServedModel, ids: list[int]) -> tuple[list[SampledToken], str | None]:
        from llamarun.sampling.params import SamplingParams

        params = SamplingParams.greedy(max_tokens=MAX_VERDICT_TOKENS, logprobs=TOP_LOGPROBS, grammar=self.grammar)
        stream = served.tokens(ids, params, f"guard-{uuid.uuid4().hex[:16]}")
        tokens: list[SampledToken] = []
        finish: str | None = None
        done = False
        try:
            async for out in stream:
                tokens += out.new_tokens
                if out.finished:
                    finish, done = out.finish_reason, True
        except Exception as err:  # an engine step that failed, a prompt the engine refused
            raise LlamarunError(f"the Llama Guard model could not judge this text: {err}",
                                "check the guard model with `llamarun run`") from err
        finally:
            if not done:
                await stream.cancel()
        return tokens, finish

    def _spec(self, served: ServedModel) -> _ModelSpec:
        spec = self._specs.get(id(served))
        if spec is None:
            style = self.style or detect_style(getattr(served.template, "source", None)) or PromptStyle.GUARD_8B
            cats = active_categories(style.default_codes, self.excluded, self.custom)
            spec = _ModelSpec(style, cats, verdict_token_id(served.tokenizer))
            self._specs = {id(served): spec}  # one entry: a reloaded model is a new object
        return spec

    def _decide(self, parsed: ParsedVerdict, score: UnsafeScore | None, extra: dict) -> Verdict:
        p = None if score is None else score.probability
        if parsed.malformed:
            return Verdict(self.name, False, (UNPARSED,), p, "the guard's answer could not be read as a verdict "
                           f"({'; '.join(parsed.problems)}): treated as unsafe", extra)
        flagged = tuple(c for c in parsed.categories if c not in self.excluded)
        if parsed.verdict == "unsafe" and parsed.categories and not flagged:
            return Verdict(self.name, True, (), p, "flagged only excluded categories "
                           f"({', '.join(parsed.categories)})", extra)
        # Text we could not fully read (an unknown word among the codes, a cut answer) fails closed too.
        unreadable = UNPARSED in parsed.categories
        unsafe = parsed.verdict == "unsafe" if p is None or unreadable else p >= self.threshold
        if not unsafe:
            why = "" if p is None or parsed.verdict == "safe" else f" (P(unsafe)={p:.3f} is below {self.threshold})"
            return Verdict(self.name, True, (), p, "safe" + why, extra)
        categories = flagged if parsed.verdict == "unsafe" else ()
        names = describe([c for c in categories if c != UNPARSED], self.custom)
        detail = f"unsafe: {names}" if names else "unsafe, no category named"
        if parsed.verdict == "safe":
            detail += f" (the model wrote 'safe' but P(unsafe)={p:.3f} reaches {self.threshold})"
        return Verdict(self.name, False, categories, p, detail, extra)


def known_codes() -> tuple[str, ...]:
    """Every Llama Guard 3 code (S1..S14), for flag validation and help texts."""
    return tuple(PROMPT_NAMES)
