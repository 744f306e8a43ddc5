"""Prompt Guard: Meta's small mDeBERTa classifier for jailbreaks and prompt injections, run through Transformers.

Two generations, told apart by the checkpoint's own `id2label` (never by its name):
- Prompt Guard 1 (meta-llama/Prompt-Guard-86M): BENIGN / INJECTION / JAILBREAK.
- Prompt Guard 2 (meta-llama/Llama-Prompt-Guard-2-86M, -22M): BENIGN / MALICIOUS (or LABEL_0 / LABEL_1).

What counts depends on where the text comes from, as Meta's model card advises. User input ("input") is
filtered for jailbreaks only: users may legitimately write instructions, so Prompt Guard 1's INJECTION label
(which fires on any instruction-like text) would flag ordinary prompts. Tool results ("tool_result") are third-
party data where no instruction belongs, so the score is P(injection) + P(jailbreak): indirect injection is
the risk there. Prompt Guard 2 has one MALICIOUS label; its probability is the score on both kinds, reported as
"jailbreak" on input and "injection" on tool results (what an override attempt is in each place).

The model reads at most 512 tokens (its position table). A longer text is tokenized once and cut into windows
of that many tokens (less [CLS] and [SEP]), each overlapping the one before by an eighth, so an attack sentence
that straddles a cut is still seen whole in one window; the windows run as one batch and the text's score is
its highest window score (an attack anywhere makes the text unsafe). A text is unsafe when its score reaches
`threshold`.

Letters spaced apart ("i g n o r e  p r e v i o u s") break words into single-character tokens the classifier
never saw in attacks, a known way around Prompt Guard 1. When a text has such runs, it is scored a second time
with them joined ("ignore previous"), and the higher score counts; joining can only reveal an attack, not hide one.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from dataclasses import dataclass

from llamarun.errors import LlamarunError
from llamarun.safety.verdict import Subject, Verdict

# Short names for the CLI flag (`--prompt-guard prompt-guard-2-22m`); anything else is a repo id or a path.
PROMPT_GUARD_MODELS = {
    "prompt-guard": "meta-llama/Prompt-Guard-86M",
    "prompt-guard-86m": "meta-llama/Prompt-Guard-86M",
    "prompt-guard-2": "meta-llama/Llama-Prompt-Guard-2-86M",
    "prompt-guard-2-86m": "meta-llama/Llama-Prompt-Guard-2-86M",
    "prompt-guard-2-22m": "meta-llama/Llama-Prompt-Guard-2-22M",
}
DEFAULT_MODEL = "meta-llama/Prompt-Guard-86M"


@dataclass(frozen=True)
class LabelLayout:
    """Where each label sits in the classifier's output; injection/jailbreak (v1) or malicious (v2) is None."""

    benign: int
    injection: int | None = None
    jailbreak: int | None = None
    malicious: int | None = None

    def score(self, probabilities: list[float], kind: str) -> tuple[float, dict[str, float]]:
        """The unsafe score of one window for a subject of `kind`, and the per-category probabilities in it."""
        if self.malicious is not None:
            category = "injection" if kind == "tool_result" else "jailbreak"
            return probabilities[self.malicious], {category: probabilities[self.malicious]}
        counted = {"jailbreak": probabilities[self.jailbreak]}
        if kind == "tool_result":
            counted["injection"] = probabilities[self.injection]
        return sum(counted.values()), counted


def label_layout(id2label: dict) -> LabelLayout:
    """The layout of a Prompt Guard 1 or 2 checkpoint from its config's id2label; anything else is a user error."""
    names = {str(label).strip().upper(): int(index) for index, label in id2label.items()}
    if set(names) == {"BENIGN", "INJECTION", "JAILBREAK"}:
        return LabelLayout(names["BENIGN"], injection=names["INJECTION"], jailbreak=names["JAILBREAK"])
    if set(names) == {"BENIGN", "MALICIOUS"}:
        return LabelLayout(names["BENIGN"], malicious=names["MALICIOUS"])
    if set(names) == {"LABEL_0", "LABEL_1"}:  # Prompt Guard 2 as some exports label it: 0 benign, 1 malicious
        return LabelLayout(names["LABEL_0"], malicious=names["LABEL_1"])
    raise LlamarunError(f"the classifier's labels {sorted(names)} are not Prompt Guard's",
                        "give a Prompt Guard 1 (BENIGN/INJECTION/JAILBREAK) or 2 (BENIGN/MALICIOUS) checkpoint")


# Three or more single characters apart by blanks: a word spelled out to dodge the tokenizer.
_SPACED_LETTERS = re.compile(r"(?<!\S)(?:\S[ \t]+){2,}\S(?!\S)")


def despaced(text: str) -> str:
    """`text` with every run of spaced-apart single characters joined: the narrowest gap in a run separates
    letters, a wider one words ("i g n o r e   a l l" and "i  g  n  o  r  e    a  l  l" become "ignore all")."""
    def join(match: re.Match) -> str:
        run = match.group()
        narrowest = min(len(gap) for gap in re.findall(r"[ \t]+", run))
        words = re.split(rf"[ \t]{{{narrowest + 1},}}", run)
        return " ".join(re.sub(r"[ \t]", "", word) for word in words)

    return _SPACED_LETTERS.sub(join, text)


def windows(ids: list[int], size: int) -> list[list[int]]:
    """`ids` cut into windows of at most `size` tokens, each overlapping the previous one by size // 8."""
    if len(ids) <= size:
        return [ids]
    step = size - size // 8
    starts = range(0, len(ids) - size + step, step)
    return [ids[start:start + size] for start in starts]


def resolve_model(model: str) -> str:
    """A short name, a repo id or a local path as what from_pretrained takes; a missing path is a user error."""
    model = PROMPT_GUARD_MODELS.get(model.strip().lower(), model.strip())
    expanded = os.path.expanduser(model)
    if os.path.exists(expanded):
        return expanded
    # a repo id is "owner/name"; anything else that is not on disk is a path that does not exist
    if model.startswith(("/", ".", "~")) or model.count("/") != 1:
        raise LlamarunError(f"Prompt Guard model '{model}' is not a folder here nor a Hugging Face repo id",
                            "give a path to a saved classifier, a repo id like meta-llama/Prompt-Guard-86M, "
                            f"or one of {', '.join(PROMPT_GUARD_MODELS)}")
    return model


class PromptGuard:
    """The guard that scores user input for jailbreaks and tool results for prompt injection.

    model: a short name (PROMPT_GUARD_MODELS), a Hugging Face repo id, or a local folder from save_pretrained.
    threshold: the score (0..1) from which a text is unsafe.
    device: "cpu" (default), or "cuda" / "cuda:N" when asked.
    batch_size: windows per forward pass for long texts.
    """

    name = "prompt_guard"
    kinds = frozenset({"input", "tool_result"})

    def __init__(self, model: str = DEFAULT_MODEL, *, threshold: float = 0.5, device: str = "cpu",
                 batch_size: int = 16) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise LlamarunError(f"Prompt Guard threshold {threshold} is outside 0..1", "give a value in 0..1")
        if batch_size < 1:
            raise LlamarunError(f"Prompt Guard batch size {batch_size} is below 1")
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as error:
            raise LlamarunError("Prompt Guard needs transformers", "pip install 'llamarun[safety]'") from error
        self.threshold = threshold
        self.batch_size = batch_size
        self.device = _device(torch, device)
        source = resolve_model(model)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source)
            classifier = AutoModelForSequenceClassification.from_pretrained(source)
        except (OSError, ValueError, KeyError, RuntimeError) as error:  # missing, gated, offline, not a classifier
            raise LlamarunError(f"cannot load Prompt Guard from '{source}': {error}",
                                "check the path, or log in to Hugging Face and accept the model's license") from error
        self.layout = label_layout(classifier.config.id2label)
        self._model = classifier.to(self.device).eval()
        self.model = source
        # every window is wrapped as the model was trained: [CLS] window [SEP]
        self._prefix = [self._tokenizer.cls_token_id] if self._tokenizer.cls_token_id is not None else []
        self._suffix = [self._tokenizer.sep_token_id] if self._tokenizer.sep_token_id is not None else []
        # the window: the model's position table (the tokenizer may be stricter), less those wrappers
        limit = min(getattr(classifier.config, "max_position_embeddings", 512) or 512,
                    getattr(self._tokenizer, "model_max_length", 512) or 512)
        self.window_tokens = limit - len(self._prefix) - len(self._suffix)
        self._lock = threading.Lock()  # one call at a time: torch already uses every core for one forward

    async def check(self, subject: Subject) -> Verdict:
        """Score `subject` off the event loop (a forward pass is milliseconds to a second of CPU)."""
        return await asyncio.to_thread(self.judge, subject.text, subject.kind)

    def judge(self, text: str, kind: str = "input") -> Verdict:
        """The verdict for `text` seen as a subject of `kind`, synchronously."""
        found = self._worst_window(text, kind)
        joined = despaced(text)
        if joined != text:
            alternative = self._worst_window(joined, kind)
            if alternative[0] > found[0]:
                found = alternative
                alternative[2]["despaced"] = True  # the score is that of the text with spelled-out words joined
        score, counted, extra = found
        if not extra:
            return Verdict(self.name, True, score=0.0, detail="empty text")
        parts, best = extra["windows"], extra["window"]
        if score < self.threshold:
            return Verdict(self.name, True, score=score, detail=f"score {score:.3f} below {self.threshold}",
                           extra=extra)
        ranked = sorted(counted, key=counted.__getitem__, reverse=True)
        categories = (ranked[0], *(label for label in ranked[1:] if counted[label] >= self.threshold))
        where = f" (window {best + 1} of {parts})" if parts > 1 else ""
        return Verdict(self.name, False, categories=categories, score=score, extra=extra,
                       detail=f"likely {' and '.join(categories)}: score {score:.3f}{where}")

    def _worst_window(self, text: str, kind: str) -> tuple[float, dict[str, float], dict]:
        """The highest window score of `text`, that window's counted probabilities, and what to report."""
        # the whole text at once (windows come after), so no warning that it is longer than the model reads
        with self._lock:  # a fast tokenizer is not safe to share between threads mid-call
            ids = self._tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if not ids:
            return 0.0, {}, {}
        parts = windows(ids, self.window_tokens)
        probabilities = self.window_probabilities(parts)
        scored = [self.layout.score(window, kind) for window in probabilities]
        best = max(range(len(scored)), key=lambda index: scored[index][0])
        score, counted = scored[best]
        extra = {"window": best, "windows": len(parts), "probabilities": {
            label: round(probabilities[best][index], 6) for index, label in self._model.config.id2label.items()}}
        return min(score, 1.0), counted, extra  # a sum of probabilities can pass 1.0 by rounding

    def window_probabilities(self, parts: list[list[int]]) -> list[list[float]]:
        """Softmax over the labels for each window of token ids (without [CLS]/[SEP]), in batches padded on the
        right (the attention mask hides the padding, and the classifier reads position 0, [CLS])."""
        import torch

        results: list[list[float]] = []
        for start in range(0, len(parts), self.batch_size):
            batch = [self._prefix + part + self._suffix for part in parts[start:start + self.batch_size]]
            longest = max(len(ids) for ids in batch)
            pad = self._tokenizer.pad_token_id or 0
            input_ids = torch.tensor([ids + [pad] * (longest - len(ids)) for ids in batch])  # [windows, tokens]
            mask = torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids in batch])  # [windows, tokens]
            with self._lock, torch.inference_mode():
                logits = self._model(input_ids=input_ids.to(self.device),
                                     attention_mask=mask.to(self.device)).logits  # [windows, labels]
            results.extend(torch.softmax(logits.float(), dim=-1).cpu().tolist())
        return results


def _device(torch, device: str):  # -> torch.device
    """`device` as a torch device that exists here; a user error otherwise."""
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise LlamarunError(f"Prompt Guard device '{device}' is not a device", "give cpu or cuda[:N]") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise LlamarunError("Prompt Guard was asked to run on CUDA, but no GPU is visible", "use --device cpu")
    if parsed.type not in ("cpu", "cuda"):
        raise LlamarunError(f"Prompt Guard runs on cpu or cuda, not '{device}'")
    return parsed
