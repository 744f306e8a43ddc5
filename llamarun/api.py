"""The Python API: `LLM("smollm2:135m").chat([...])`.

This is the text side of the data path: resolve the model, check the memory plan, load it,
render the chat template, tokenize, run the token-level engine, detokenize incrementally and cut
at stop strings. The CLI is a thin shell around it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llamarun.engine.single import GenerationStats, SingleRequestGenerator
from llamarun.sampling.params import SamplingParams
from llamarun.sampling.stop import StopStringMatcher
from llamarun.text.detokenizer import IncrementalDetokenizer

DEFAULT_CONTEXT = 4096  # Ollama's default num_ctx


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    # CPUs without bf16 units run float32 matmuls fastest; GPUs run bf16.
    return torch.float32 if device == "cpu" else torch.bfloat16


WEIGHT_MODES = ("auto", "exact", "int8")


def choose_weights(mode: str, ckpt, device: str) -> str:
    """How linear weights are held: expanded to the compute dtype ("exact") or packed int8.

    "auto" packs on CPUs when the checkpoint is already quantized (GGUF, MLX): decoding is bound by
    memory bandwidth there, and int8 costs a quarter of float32's bytes for a deviation far below the
    file's own quantization error. Float checkpoints stay exact unless asked.
    """
    from llamarun.errors import LlamarunError
    from llamarun.quant.int8_cpu import supported_here

    if mode not in WEIGHT_MODES:
        raise LlamarunError(f"unknown weights mode '{mode}'", f"choose one of {', '.join(WEIGHT_MODES)}")
    if mode == "auto":
        return "int8" if ckpt.is_quantized and supported_here(device) else "exact"
    if mode == "int8" and not supported_here(device):
        raise LlamarunError(f"int8 weights run on the CPU only, not on '{device}'", "use --weights exact")
    return mode


def weight_bytes(config, mode: str, element: int) -> int:
    """Bytes the loaded weights take: linears at 1 byte per parameter when packed int8."""
    embed = config.vocab_size * config.hidden_size
    if mode == "exact":
        return config.num_parameters * element
    head = embed  # packed int8 copy of the output head, tied or not
    linears = config.num_parameters - embed - (0 if config.tie_word_embeddings else embed)
    return embed * element + linears + head


@dataclass
class Completion:
    """A finished generation: its text and Ollama-style statistics."""

    text: str
    token_ids: list[int]
    stats: GenerationStats


@dataclass
class TextStream:
    """Iterate for text pieces as they are generated; `text`, `token_ids` and `stats` fill in as it goes."""

    pieces: Iterator[str]
    stats: GenerationStats
    token_ids: list[int] = field(default_factory=list)
    text: str = ""

    def __iter__(self) -> Iterator[str]:
        for piece in self.pieces:
            self.text += piece
            yield piece

    def result(self) -> Completion:
        """Drain the stream and return the completion."""
        for _ in self:
            pass
        return Completion(self.text, self.token_ids, self.stats)


class LLM:
    """A loaded model, ready to complete prompts or chats.

    model: a store name (`smollm2:135m`, `llama3.1:8b`) or a local path to any supported checkpoint.
    """

    def __init__(self, model: str, *, context_length: int | None = None, device: str | None = None,
                 dtype: torch.dtype | None = None, weights: str = "auto", progress: bool = False) -> None:
        from llamarun.chat.select import select_chat_template
        from llamarun.loaders.registry import open_checkpoint
        from llamarun.models.build import build_model
        from llamarun.quant.int8_cpu import pack_int8
        from llamarun.store.resolve import resolve_model
        from llamarun.utils.memory import plan_memory
        from llamarun.utils.progress import count_bar

        t0 = time.perf_counter()
        self.resolved = resolve_model(model)
        self.checkpoint = ckpt = open_checkpoint(self.resolved.path, self.resolved.format)
        self.config = ckpt.config
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.context_length = min(context_length or DEFAULT_CONTEXT, self.config.max_position_embeddings)
        self.weights = choose_weights(weights, ckpt, self.device)
        element = torch.finfo(self.dtype).bits // 8
        plan_memory(self.config, weight_bytes(self.config, self.weights, element), self.context_length,
                    device=self.device, kv_bytes_per_element=element, model_name=self.resolved.name).check()
        self.tokenizer = ckpt.tokenizer()
        self.template = select_chat_template(ckpt.chat_template, self.tokenizer)
        self.stop_ids = ckpt.stop_token_ids()
        with count_bar("loading weights", len(ckpt.tensor_names), enabled=None if progress else False) as bar:
            self.model = build_model(ckpt, self.dtype, self.device, on_tensor=lambda _name: bar.advance(),
                                     pack=pack_int8 if self.weights == "int8" else None)
        self.engine = SingleRequestGenerator(self.model, self.context_length, self.dtype, self.device)
        self.load_seconds = time.perf_counter() - t0

    # ----- prompts to ids -----

    def chat_ids(self, messages: Sequence[dict[str, Any]], tools: list[dict] | None = None) -> list[int]:
        return self.template.encode(list(messages), self.tokenizer, add_generation_prompt=True, tools=tools)

    def prompt_ids(self, prompt: str) -> list[int]:
        """A raw prompt, no template: bos is added when the tokenizer's convention says so."""
        return self.tokenizer.encode(prompt, add_bos=self.tokenizer.add_bos, allow_special=True)

    # ----- generation -----

    def stream_ids(self, prompt_ids: list[int], params: SamplingParams | None = None) -> TextStream:
        """Generate from token ids, streaming text."""
        params = params or SamplingParams()
        stats = GenerationStats()
        stream = TextStream(iter(()), stats)
        stream.pieces = self._pieces(prompt_ids, params, stats, stream.token_ids)
        return stream

    def stream_chat(self, messages: Sequence[dict[str, Any]], params: SamplingParams | None = None) -> TextStream:
        return self.stream_ids(self.chat_ids(messages), params)

    def chat(self, messages: Sequence[dict[str, Any]], params: SamplingParams | None = None) -> Completion:
        return self.stream_chat(messages, params).result()

    def generate(self, prompt: str, params: SamplingParams | None = None) -> Completion:
        return self.stream_ids(self.prompt_ids(prompt), params).result()

    def reset(self) -> None:
        """Drop the cached conversation prefix."""
        self.engine.reset()

    def _pieces(self, prompt_ids: list[int], params: SamplingParams, stats: GenerationStats,
                out_ids: list[int]) -> Iterator[str]:
        detok = IncrementalDetokenizer(self.tokenizer, skip_special=True)
        stops = StopStringMatcher(params.stop)
        tokens = self.engine.generate(prompt_ids, params, self.stop_ids, stats)
        for token in tokens:
            out_ids.append(token)
            text, hit = stops.push(detok.add(token))
            if text:
                yield text
            if hit:
                tokens.close()
                stats.done_reason = "stop"
                return
        text, _ = stops.push(detok.flush())
        tail = text + stops.flush()
        if tail:
            yield tail

